"""``rules=`` arguments of structured pruning, in either framework: a mapping from layer classes to rules.

Framework-free: the torch and Keras rule packages pass their own layer base class and rule class,
so both validate and look up a user's rules the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from prunekit.errors import ConfigError

R = TypeVar("R")


def check_rule_map(rules: Any, *, layer_base: type, layer_label: str, rule_type: type, package: str) -> dict[type, Any]:
    """Validate ``rules``: ``None`` or a mapping from ``layer_base`` subclasses to ``rule_type`` instances.

    ``layer_label`` names the base class in messages (``"an nn.Module"``), ``package`` where the rule
    class lives (``"prunekit.torch.structured.rules"``).

    Example::

        check_rule_map({MyLayer: MyRule()}, layer_base=nn.Module, layer_label="an nn.Module", rule_type=ChannelRule, package=...)
    """
    if rules is None:
        return {}
    example = f"{layer_base.__name__}Class"
    if not isinstance(rules, Mapping):
        raise ConfigError(f"rules should be a mapping {{{example}: {rule_type.__name__}()}}, got {type(rules).__name__}")
    checked: dict[type, Any] = {}
    for key, rule in rules.items():
        if not (isinstance(key, type) and issubclass(key, layer_base)):
            raise ConfigError(f"rules: key {key!r} should be {layer_label} subclass (the class, not an instance)")
        if not isinstance(rule, rule_type):
            raise ConfigError(
                f"rules[{key.__name__}] should be a {rule_type.__name__} instance ({package}), got {type(rule).__name__}"
            )
        checked[key] = rule
    return checked


def rule_for(layer: Any, *maps: Mapping[type, R]) -> R | None:
    """The rule for the most specific class of ``layer``, searching each map in turn (the user's first)."""
    for rules in maps:
        for cls in type(layer).__mro__:
            rule = rules.get(cls)
            if rule is not None:
                return rule
    return None
