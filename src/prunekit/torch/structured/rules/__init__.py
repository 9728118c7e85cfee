"""How channel labels flow through each traced operation (``layers``, ``pointwise``, ``shape``,
``recurrent``), and the public rule hook for modules (``base``: :class:`ChannelRule`; the
built-in layers' rules are in ``modules``)."""

from prunekit.torch.structured.rules.base import ChannelRule, Coupling, RuleError, Shrink, TracedRule

__all__ = ["ChannelRule", "Coupling", "RuleError", "Shrink", "TracedRule"]
