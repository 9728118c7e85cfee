"""Moved to :mod:`prunekit.demo.keras_demo`; this path warns and goes away in the next release."""

from prunekit.core.moved import alias_module

alias_module(__name__, "prunekit.demo.keras_demo")
