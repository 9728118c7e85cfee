"""PyTorch backend: unstructured and structured pruning, training drivers, metrics, export.

Importing this module needs the ``torch`` extra: ``pip install 'prunekit[torch]'``.
"""

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
from prunekit.torch.measure.macs import MacsReport, count_macs, count_params  # noqa: E402
from prunekit.torch.measure.metrics import print_sparsity_table, serialized_size, sparsity_report  # noqa: E402
from prunekit.torch.measure.summary import LayerStats, ModelSummary, summarize  # noqa: E402
from prunekit.torch.models import DigitsCNN, DigitsMLP  # noqa: E402
from prunekit.torch.structured.graph import ChannelGroup, DependencyGraph, GroupMember, analyze_dependencies  # noqa: E402
from prunekit.torch.structured.importance import (  # noqa: E402
    ActivationImportance,
    BNScaleImportance,
    MagnitudeImportance,
    RandomImportance,
    TaylorImportance,
)
from prunekit.torch.structured.iterative import prune_channels_iteratively  # noqa: E402
from prunekit.torch.structured.plan import apply_plan, compose_plans, load_pruned, plan_of, save_pruned  # noqa: E402
from prunekit.torch.structured.prune import StructuredResult, prune_channels, remove_channels  # noqa: E402
from prunekit.torch.structured.report import StructuredReport  # noqa: E402
from prunekit.torch.tradeoffs.allocation import (  # noqa: E402
    allocate_ratios,
    apply_ratios,
    compare_allocations,
    global_ratios,
    search_ratios,
    uniform_ratios,
)
from prunekit.torch.tradeoffs.sensitivity import Accuracy, ChannelPruner, analyze_sensitivity  # noqa: E402
from prunekit.torch.tradeoffs.structured_allocation import (  # noqa: E402
    allocate_channels,
    apply_channel_ratios,
    channel_layers,
    compare_channel_allocations,
    global_channels,
    uniform_channels,
)
from prunekit.torch.training import PruningCallback, default_device, evaluate, fit, make_loader  # noqa: E402
from prunekit.torch.unstructured.dynamic import DynamicPruner  # noqa: E402
from prunekit.torch.unstructured.dynamic_training import train_sparse  # noqa: E402
from prunekit.torch.unstructured.pruner import NM, Blocks, Pruner, prune_unstructured  # noqa: E402
from prunekit.torch.unstructured.selection import DEFAULT_TARGET_TYPES, select_parameters  # noqa: E402
from prunekit.torch.unstructured.workflows import (  # noqa: E402
    PruningRun,
    prune_gradually,
    prune_iteratively,
    prune_one_shot,
)
from prunekit.tradeoffs.budget import Allocation, SensitivityTable, allocation_table  # noqa: E402

__all__ = [
    "Accuracy",
    "Allocation",
    "ChannelPruner",
    "DynamicPruner",
    "LatencyResult",
    "LayerStats",
    "MemoryResult",
    "ModelSummary",
    "SensitivityTable",
    "allocate_channels",
    "allocate_ratios",
    "allocation_table",
    "analyze_sensitivity",
    "apply_channel_ratios",
    "apply_ratios",
    "channel_layers",
    "train_sparse",
    "load_sparse",
    "sparsify",
    "compare_allocations",
    "compare_channel_allocations",
    "global_channels",
    "global_ratios",
    "latency_ratio",
    "measure_latency",
    "measure_peak_memory",
    "search_ratios",
    "summarize",
    "uniform_channels",
    "uniform_ratios",
    "ActivationImportance",
    "BNScaleImportance",
    "ChannelGroup",
    "DependencyGraph",
    "GroupMember",
    "MagnitudeImportance",
    "RandomImportance",
    "StructuredReport",
    "StructuredResult",
    "TaylorImportance",
    "analyze_dependencies",
    "apply_plan",
    "compose_plans",
    "load_pruned",
    "plan_of",
    "prune_channels",
    "prune_channels_iteratively",
    "remove_channels",
    "save_pruned",
    "DEFAULT_TARGET_TYPES",
    "NM",
    "Blocks",
    "Comparison",
    "DigitsCNN",
    "DigitsMLP",
    "MacsReport",
    "Pruner",
    "PruningCallback",
    "PruningRun",
    "compare_artifacts",
    "count_macs",
    "count_params",
    "default_device",
    "evaluate",
    "evaluate_onnx",
    "export_onnx",
    "fit",
    "gradual_schedule",
    "iterative_schedule",
    "load_compressed",
    "make_loader",
    "print_sparsity_table",
    "prune_gradually",
    "prune_iteratively",
    "prune_one_shot",
    "prune_unstructured",
    "quantize_onnx",
    "save_compressed",
    "select_parameters",
    "serialized_size",
    "sparsity_report",
    "verify_onnx",
]
