"""Moved to :mod:`prunekit.torch.tradeoffs.allocation`; this path warns and goes away in the next release."""

from prunekit.core.moved import alias_module

alias_module(__name__, "prunekit.torch.tradeoffs.allocation")
