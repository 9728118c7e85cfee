"""Structured pruning: trace the model, find coupled channels (rules/), rank them, remove them physically, record the plan."""

from prunekit.torch.structured.graph import ChannelGroup, DependencyGraph, LeftAlone, analyze_dependencies
from prunekit.torch.structured.iterative import prune_channels_iteratively
from prunekit.torch.structured.plan import apply_plan, load_pruned, save_pruned
from prunekit.torch.structured.prune import (
    HeadsNotFollowedWarning,
    PruningShortfallWarning,
    StructuredResult,
    prune_channels,
    remove_channels,
)
from prunekit.torch.structured.rules.base import ChannelRule, Coupling, RuleError, Shrink, TracedRule

__all__ = [
    "ChannelGroup",
    "ChannelRule",
    "Coupling",
    "DependencyGraph",
    "HeadsNotFollowedWarning",
    "LeftAlone",
    "PruningShortfallWarning",
    "RuleError",
    "Shrink",
    "StructuredResult",
    "TracedRule",
    "analyze_dependencies",
    "apply_plan",
    "load_pruned",
    "prune_channels",
    "prune_channels_iteratively",
    "remove_channels",
    "save_pruned",
]
