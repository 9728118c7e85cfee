"""Keras 3 backend (TensorFlow backend): TF MOT's pruning workflow without wrapper layers, structured
filter/neuron removal, TFLite conversion and interpreter evaluation.

Importing this module needs the ``keras`` extra (``pip install 'prunekit[keras]'``) and selects
Keras's TensorFlow backend when ``KERAS_BACKEND`` is unset. The names follow TF MOT, so a tfmot
script ports by changing its import::

    import prunekit.keras as sparsity      # was: sparsity = tfmot.sparsity.keras

    model = sparsity.prune_low_magnitude(model, pruning_schedule=sparsity.PolynomialDecay(0.0, 0.8, 0, 1000))
    model.compile(...); model.fit(x, y, callbacks=[sparsity.UpdatePruningStep()])
    plain = sparsity.strip_pruning(model)
"""

from prunekit.keras._backend import ensure_tensorflow_backend

ensure_tensorflow_backend()

from prunekit.keras.deploy.saving import load_model  # noqa: E402
from prunekit.keras.deploy.tflite import (  # noqa: E402
    TFLiteModel,
    compare_tflite,
    convert_to_tflite,
    evaluate_tflite,
)
from prunekit.keras.measure.metrics import serialized_size, sparsity_report  # noqa: E402
from prunekit.keras.models import digits_cnn, digits_mlp, load_digits_nhwc  # noqa: E402
from prunekit.keras.structured.prune import channel_groups, prune_channels, remove_channels  # noqa: E402
from prunekit.keras.tradeoffs.allocation import (  # noqa: E402
    allocate_ratios,
    apply_ratios,
    compare_allocations,
    global_ratios,
    uniform_ratios,
)
from prunekit.keras.tradeoffs.sensitivity import Accuracy, analyze_sensitivity  # noqa: E402
from prunekit.keras.unstructured.callbacks import PruningSummaries, UpdatePruningStep  # noqa: E402
from prunekit.keras.unstructured.dynamic import DynamicSparsity, prune_sparse  # noqa: E402
from prunekit.keras.unstructured.layers import PrunableLayer  # noqa: E402
from prunekit.keras.unstructured.policy import PruneForLatencyOnXNNPack, PruningPolicy  # noqa: E402
from prunekit.keras.unstructured.pruning import (  # noqa: E402
    get_masks,
    prune_low_magnitude,
    prune_scope,
    pruned_layers,
    strip_pruning,
)
from prunekit.keras.unstructured.schedules import ConstantSparsity, PolynomialDecay, PruningSchedule  # noqa: E402
from prunekit.keras.unstructured.workflows import (  # noqa: E402
    PruningRun,
    prune_gradually,
    prune_iteratively,
    prune_one_shot,
)
from prunekit.schedules import IterativeSparsity, gradual_schedule, iterative_schedule  # noqa: E402
from prunekit.tradeoffs.budget import Allocation, SensitivityTable, allocation_table  # noqa: E402

__all__ = [
    "DynamicSparsity",
    "prune_sparse",
    "Accuracy",
    "Allocation",
    "ConstantSparsity",
    "IterativeSparsity",
    "PolynomialDecay",
    "PrunableLayer",
    "PruneForLatencyOnXNNPack",
    "PruningPolicy",
    "PruningRun",
    "PruningSchedule",
    "PruningSummaries",
    "SensitivityTable",
    "TFLiteModel",
    "UpdatePruningStep",
    "allocate_ratios",
    "allocation_table",
    "analyze_sensitivity",
    "apply_ratios",
    "channel_groups",
    "compare_allocations",
    "compare_tflite",
    "convert_to_tflite",
    "digits_cnn",
    "digits_mlp",
    "evaluate_tflite",
    "get_masks",
    "global_ratios",
    "gradual_schedule",
    "iterative_schedule",
    "load_digits_nhwc",
    "load_model",
    "prune_channels",
    "prune_gradually",
    "prune_iteratively",
    "prune_low_magnitude",
    "prune_one_shot",
    "prune_scope",
    "pruned_layers",
    "remove_channels",
    "serialized_size",
    "sparsity_report",
    "strip_pruning",
    "uniform_ratios",
]
