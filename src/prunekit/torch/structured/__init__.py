"""Structured pruning: trace the model, find coupled channels (rules/), rank them, remove them physically, record the plan."""

from prunekit.torch.structured.graph import ChannelGroup, DependencyGraph, analyze_dependencies
from prunekit.torch.structured.iterative import prune_channels_iteratively
from prunekit.torch.structured.plan import apply_plan, load_pruned, save_pruned
from prunekit.torch.structured.prune import StructuredResult, prune_channels, remove_channels

__all__ = [
    "ChannelGroup",
    "DependencyGraph",
    "StructuredResult",
    "analyze_dependencies",
    "apply_plan",
    "load_pruned",
    "prune_channels",
    "prune_channels_iteratively",
    "remove_channels",
    "save_pruned",
]
