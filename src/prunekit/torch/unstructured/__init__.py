"""Unstructured, N:M and block pruning from the user's own loop: the Pruner, parameter selection, the training workflows, dynamic sparse training."""

from prunekit.torch.unstructured.dynamic import DynamicPruner
from prunekit.torch.unstructured.dynamic_training import train_sparse
from prunekit.torch.unstructured.pruner import NM, Blocks, Pruner, prune_unstructured
from prunekit.torch.unstructured.selection import select_parameters
from prunekit.torch.unstructured.workflows import prune_gradually, prune_iteratively, prune_one_shot

__all__ = [
    "NM",
    "Blocks",
    "DynamicPruner",
    "Pruner",
    "prune_gradually",
    "prune_iteratively",
    "prune_one_shot",
    "prune_unstructured",
    "select_parameters",
    "train_sparse",
]
