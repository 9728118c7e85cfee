"""The exception types prunekit raises, so users can catch them precisely.

Every error is also a builtin type (``ValueError``, ``KeyError``, ``ImportError``) so that code
written against plain Python keeps working.
"""

from __future__ import annotations


class PrunekitError(Exception):
    """Base class of every error prunekit raises on purpose."""


class ConfigError(PrunekitError, ValueError):
    """An argument or config field has a value prunekit cannot use; the message names it."""


class LayerNotFoundError(ConfigError):
    """A layer name or glob matches nothing in the model."""


class StateMismatchError(ConfigError):
    """A saved state (pruner state, plan, file) does not fit the model it is loaded into."""


class MissingDependencyError(PrunekitError, ImportError):
    """An optional framework is not installed; the message says which extra to install."""


class CorruptFileError(PrunekitError, ValueError):
    """A prunekit file is truncated, corrupted or from a newer format version."""


class ExportError(PrunekitError, RuntimeError):
    """A model could not be exported or quantized, or the artifact disagrees with the model.

    The message names the op, tensor or output and the measured error.
    """


class SparsityWarning(UserWarning):
    """A pruning run ends far from the sparsity its schedule targets (say, ``begin_step`` was never reached)."""


class ExportFallbackWarning(UserWarning):
    """The ``dynamo=True`` ONNX exporter could not export a model, so the legacy TorchScript exporter did."""
