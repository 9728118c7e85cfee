"""prunekit: make trained neural networks smaller and faster to deploy.

Framework-free parts (schedules, mask selection, datasets) live at the top level; the
backends are ``prunekit.torch`` and ``prunekit.keras`` and import their framework lazily.
"""

from __future__ import annotations

__version__ = "0.1.0"

from prunekit.errors import (
    ConfigError,
    CorruptFileError,
    ExportError,
    LayerNotFoundError,
    MissingDependencyError,
    PrunekitError,
    StateMismatchError,
)
from prunekit.masks import block_mask, global_masks, nm_mask, topk_mask
from prunekit.schedules import (
    ConstantSparsity,
    IterativeSparsity,
    PolynomialDecay,
    PruningSchedule,
    gradual_schedule,
    iterative_schedule,
    schedule_from_config,
)

__all__ = [
    "__version__",
    "ConfigError",
    "ConstantSparsity",
    "CorruptFileError",
    "ExportError",
    "IterativeSparsity",
    "LayerNotFoundError",
    "MissingDependencyError",
    "PolynomialDecay",
    "PruningSchedule",
    "PrunekitError",
    "StateMismatchError",
    "block_mask",
    "global_masks",
    "gradual_schedule",
    "iterative_schedule",
    "nm_mask",
    "schedule_from_config",
    "topk_mask",
]
