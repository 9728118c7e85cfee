"""The public rule hook for Keras structured pruning (``base``: :class:`ChannelRule`) and the rules of
Keras' built-in layers, written against it (``layers``, ``recurrent``, ``attention``)."""

from prunekit.keras.structured.rules.attention import ATTENTION_RULES
from prunekit.keras.structured.rules.base import ChannelRule, Coupling, RuleError, Shrink
from prunekit.keras.structured.rules.layers import LAYER_RULES
from prunekit.keras.structured.rules.recurrent import RECURRENT_RULES

BUILTIN_RULES = {**LAYER_RULES, **RECURRENT_RULES, **ATTENTION_RULES}

__all__ = ["BUILTIN_RULES", "ChannelRule", "Coupling", "RuleError", "Shrink"]
