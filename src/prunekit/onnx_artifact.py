"""Moved to :mod:`prunekit.artifacts.onnx_artifact`; this path warns and goes away in the next release."""

from prunekit.core.moved import alias_module

alias_module(__name__, "prunekit.artifacts.onnx_artifact")
