"""PyTorch backend: unstructured and structured pruning, training drivers, metrics, export.

Importing this module needs the ``torch`` extra: ``pip install 'prunekit[torch]'``.
"""

from prunekit.core.moved import moved_names
from prunekit.core.optional import require

require("torch", "torch")

from prunekit.artifacts.onnx_artifact import evaluate_onnx  # noqa: E402
from prunekit.artifacts.quantize import quantize_onnx  # noqa: E402
from prunekit.schedules import gradual_schedule, iterative_schedule  # noqa: E402
from prunekit.torch.deploy.compact import load_compressed, save_compressed  # noqa: E402
from prunekit.torch.deploy.compare import Comparison, compare_artifacts  # noqa: E402
from prunekit.torch.deploy.export import export_onnx, verify_onnx  # noqa: E402
from prunekit.torch.deploy.sparse import load_sparse, sparsify  # noqa: E402  (sparse CPU inference)
from prunekit.torch.measure.latency import LatencyResult, MemoryResult, latency_ratio, measure_latency, measure_peak_memory  # noqa: E402
from prunekit.torch.measure.macs import count_macs, count_params  # noqa: E402
from prunekit.torch.measure.metrics import print_sparsity_table, serialized_size, sparsity_report  # noqa: E402
from prunekit.torch.measure.summary import LayerStats, ModelSummary, summarize  # noqa: E402
from prunekit.torch.models import DigitsCNN, DigitsMLP  # noqa: E402
from prunekit.torch.structured.graph import ChannelGroup, analyze_dependencies  # noqa: E402
from prunekit.torch.structured.iterative import prune_channels_iteratively  # noqa: E402
from prunekit.torch.structured.plan import load_pruned, save_pruned  # noqa: E402
from prunekit.torch.structured.prune import prune_channels, remove_channels  # noqa: E402
from prunekit.torch.tradeoffs.allocation import allocate_ratios, apply_ratios, compare_allocations, search_ratios  # noqa: E402
from prunekit.torch.tradeoffs.sensitivity import Accuracy, ChannelPruner, analyze_sensitivity  # noqa: E402
from prunekit.torch.tradeoffs.structured_allocation import (  # noqa: E402
    allocate_channels,
    apply_channel_ratios,
    channel_layers,
    compare_channel_allocations,
    global_channels,
    uniform_channels,
)
from prunekit.torch.training import PruningCallback, evaluate, fit, make_loader  # noqa: E402
from prunekit.torch.unstructured.dynamic import DynamicPruner  # noqa: E402
from prunekit.torch.unstructured.dynamic_training import train_sparse  # noqa: E402
from prunekit.torch.unstructured.pruner import NM, Blocks, Pruner, prune_unstructured  # noqa: E402
from prunekit.torch.unstructured.workflows import PruningRun, prune_gradually, prune_iteratively, prune_one_shot  # noqa: E402
from prunekit.tradeoffs.budget import allocation_table  # noqa: E402

__all__ = [
    "Accuracy",
    "allocate_channels",
    "allocate_ratios",
    "allocation_table",
    "analyze_dependencies",
    "analyze_sensitivity",
    "apply_channel_ratios",
    "apply_ratios",
    "Blocks",
    "channel_layers",
    "ChannelGroup",
    "ChannelPruner",
    "compare_allocations",
    "compare_artifacts",
    "compare_channel_allocations",
    "Comparison",
    "count_macs",
    "count_params",
    "DigitsCNN",
    "DigitsMLP",
    "DynamicPruner",
    "evaluate",
    "evaluate_onnx",
    "export_onnx",
    "fit",
    "global_channels",
    "gradual_schedule",
    "iterative_schedule",
    "latency_ratio",
    "LatencyResult",
    "LayerStats",
    "load_compressed",
    "load_pruned",
    "make_loader",
    "measure_latency",
    "measure_peak_memory",
    "MemoryResult",
    "ModelSummary",
    "NM",
    "print_sparsity_table",
    "prune_channels",
    "prune_channels_iteratively",
    "prune_gradually",
    "prune_iteratively",
    "prune_one_shot",
    "prune_unstructured",
    "Pruner",
    "PruningCallback",
    "PruningRun",
    "quantize_onnx",
    "remove_channels",
    "save_compressed",
    "save_pruned",
    "search_ratios",
    "serialized_size",
    "sparsity_report",
    "summarize",
    "train_sparse",
    "load_sparse",
    "sparsify",
    "uniform_channels",
    "verify_onnx",
]

# Names the docs do not use live in their sub-packages; the old spelling works for one release.
__getattr__ = moved_names(
    __name__,
    {
        "ActivationImportance": "prunekit.torch.structured.importance",
        "Allocation": "prunekit.tradeoffs.budget",
        "BNScaleImportance": "prunekit.torch.structured.importance",
        "DEFAULT_TARGET_TYPES": "prunekit.torch.unstructured.selection",
        "DependencyGraph": "prunekit.torch.structured.graph",
        "GroupMember": "prunekit.torch.structured.graph",
        "MacsReport": "prunekit.torch.measure.macs",
        "MagnitudeImportance": "prunekit.torch.structured.importance",
        "RandomImportance": "prunekit.torch.structured.importance",
        "SensitivityTable": "prunekit.tradeoffs.budget",
        "StructuredReport": "prunekit.torch.structured.report",
        "StructuredResult": "prunekit.torch.structured.prune",
        "TaylorImportance": "prunekit.torch.structured.importance",
        "apply_plan": "prunekit.torch.structured.plan",
        "compose_plans": "prunekit.torch.structured.plan",
        "default_device": "prunekit.torch.training",
        "global_ratios": "prunekit.torch.tradeoffs.allocation",
        "plan_of": "prunekit.torch.structured.plan",
        "select_parameters": "prunekit.torch.unstructured.selection",
        "uniform_ratios": "prunekit.torch.tradeoffs.allocation",
    },
)
