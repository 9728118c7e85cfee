"""TF MOT's pruning workflow on Keras 3 without wrapper layers: prune_low_magnitude, masks, callbacks, workflows, dynamic sparsity."""

from prunekit.keras.unstructured.callbacks import PruningSummaries, UpdatePruningStep
from prunekit.keras.unstructured.dynamic import DynamicSparsity, prune_sparse
from prunekit.keras.unstructured.pruning import prune_low_magnitude, strip_pruning
from prunekit.keras.unstructured.workflows import prune_gradually, prune_iteratively, prune_one_shot

__all__ = [
    "DynamicSparsity",
    "PruningSummaries",
    "UpdatePruningStep",
    "prune_gradually",
    "prune_iteratively",
    "prune_low_magnitude",
    "prune_one_shot",
    "prune_sparse",
    "strip_pruning",
]
