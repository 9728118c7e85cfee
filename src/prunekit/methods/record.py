"""The record that describes one method: what it is, its defaults, its checks and its handlers per framework."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from prunekit.errors import ConfigError

KINDS = ("unstructured", "structured", "dynamic", "llm", "recover", "quantize")
"""What a method does, which also fixes its handler's calling convention (see :mod:`prunekit.methods.contract`)."""

FRAMEWORKS = ("torch", "keras")

Check = Callable[[Mapping[str, Any]], list[tuple[str, str]]]
"""A recipe cross-check: gets the recipe's raw section for the method, returns ``(field, message)`` errors."""


@dataclass(frozen=True)
class Method:
    """One method: name, kind, one-line summary, handlers per framework, defaults, aliases and recipe checks.

    ``amount`` says what the number a user gives means (``"sparsity"``, ``"channel ratio"``,
    ``"fraction of blocks"``...). ``defaults`` lists every option the method takes with its default;
    ``framework_defaults`` overrides some of them for one framework (a backend fact, such as
    Keras pruning each layer on its own). ``layer_pruners`` says, per framework, how sensitivity
    analysis prunes one layer the way this method would: a factory ``(example_inputs) -> prune``
    where ``prune(model, layer, ratio)`` returns the model with that layer pruned (see
    :meth:`layer_pruner`); methods without one cannot be analysed per layer.

    Example::

        Method(name="gradual", kind="unstructured", summary="polynomial schedule while fine-tuning",
               handlers={"torch": "prunekit.torch.backend:gradual"}, defaults={"epochs": 12, "lr": 1e-3})
    """

    name: str
    kind: str
    summary: str
    handlers: Mapping[str, str | Callable[..., Any]]
    amount: str = "sparsity"
    aliases: tuple[str, ...] = ()
    defaults: Mapping[str, Any] = field(default_factory=dict)
    framework_defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    checks: tuple[Check, ...] = ()
    layer_pruners: Mapping[str, str | Callable[..., Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"method {self.name!r}"
        if not isinstance(self.name, str) or not self.name or self.name != self.name.strip():
            raise ConfigError(f"a method name should be a non-empty string without surrounding spaces, got {self.name!r}")
        if self.kind not in KINDS:
            raise ConfigError(f"{where}: kind should be one of {KINDS}, got {self.kind!r}")
        if not self.handlers:
            raise ConfigError(f"{where}: give at least one handler, e.g. handlers={{'torch': 'package.module:function'}}")
        for framework, handler in [*self.handlers.items(), *self.layer_pruners.items()]:
            if not (callable(handler) or (isinstance(handler, str) and handler.count(":") == 1)):
                raise ConfigError(
                    f"{where}: the {framework!r} handler should be a callable or 'module:attribute', got {handler!r}"
                )
        for framework, overrides in self.framework_defaults.items():
            unknown = sorted(set(overrides) - set(self.defaults))
            if framework not in self.handlers or unknown:
                raise ConfigError(
                    f"{where}: framework_defaults[{framework!r}] should override defaults of a framework "
                    f"with a handler; unknown {unknown or framework!r}"
                )
        object.__setattr__(self, "handlers", MappingProxyType(dict(self.handlers)))
        object.__setattr__(self, "layer_pruners", MappingProxyType(dict(self.layer_pruners)))
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))
        object.__setattr__(
            self,
            "framework_defaults",
            MappingProxyType({k: MappingProxyType(dict(v)) for k, v in self.framework_defaults.items()}),
        )
        object.__setattr__(self, "aliases", tuple(self.aliases))
        object.__setattr__(self, "checks", tuple(self.checks))

    @property
    def frameworks(self) -> tuple[str, ...]:
        """The frameworks this method has a handler for."""
        return tuple(self.handlers)

    def handler(self, framework: str) -> Callable[..., Any]:
        """The handler for ``framework``, imported on first use.

        Example::

            get_method("gradual").handler("torch")(job)
        """
        if framework not in self.handlers:
            raise ConfigError(f"method {self.name!r} has no {framework} handler; it runs on {list(self.frameworks)}")
        return self._resolve(self.handlers[framework])

    def layer_pruner(self, framework: str, example_inputs: Any = None) -> Callable[[Any, str, float], Any]:
        """How sensitivity analysis prunes one layer with this method: ``prune(model, layer, ratio) -> model``.

        Example::

            prune = get_method("channels").layer_pruner("torch", torch.zeros(1, 1, 8, 8))
            smaller = prune(model, "conv1", 0.5)
        """
        if framework not in self.layer_pruners:
            raise ConfigError(
                f"method {self.name!r} cannot be analysed layer by layer in {framework}; "
                f"it has a layer pruner for {list(self.layer_pruners) or 'no framework'}"
            )
        return self._resolve(self.layer_pruners[framework])(example_inputs)  # type: ignore[no-any-return]

    def _resolve(self, handler: str | Callable[..., Any]) -> Callable[..., Any]:
        if callable(handler):
            return handler
        module_name, attribute = handler.split(":")
        module = importlib.import_module(module_name)
        try:
            return getattr(module, attribute)  # type: ignore[no-any-return]
        except AttributeError:
            raise ConfigError(f"method {self.name!r}: {module_name} has no {attribute!r} (handler {handler!r})") from None

    def by_framework(self) -> dict[str, dict[str, Any]]:
        """The options whose default differs between this method's frameworks: ``{option: {framework: default}}``.

        Example::

            get_method("pqat").by_framework()   # {"freeze_bn_after": {"torch": None, "keras": 0}}
        """
        keys = sorted({key for overrides in self.framework_defaults.values() for key in overrides})
        found: dict[str, dict[str, Any]] = {}
        for key in keys:
            values = {fw: self.framework_defaults.get(fw, {}).get(key, self.defaults[key]) for fw in self.frameworks}
            if len({repr(value) for value in values.values()}) > 1:
                found[key] = values
        return found

    def options(self, framework: str | None = None, **overrides: Any) -> dict[str, Any]:
        """The method's options: its defaults for ``framework`` updated with ``overrides``.

        Unknown option names are an error that lists the known ones. Without a framework, an option
        whose default differs by framework (:meth:`by_framework`) must be given in ``overrides``:
        there is no framework-free value to hand a handler, so the call is refused rather than
        answered with one framework's default.

        Example::

            get_method("iterative").options(epochs=6)["rounds"]   # 3
            get_method("pqat").options("keras")["freeze_bn_after"]   # 0
        """
        unknown = sorted(set(overrides) - set(self.defaults))
        if unknown:
            raise ConfigError(
                f"method {self.name!r} has no option {', '.join(map(repr, unknown))}; its options are {sorted(self.defaults)}"
            )
        if framework is not None and framework not in self.handlers:
            raise ConfigError(f"method {self.name!r} has no {framework} handler; it runs on {list(self.frameworks)}")
        options = dict(self.defaults)
        if framework is None:
            ambiguous = {key: values for key, values in self.by_framework().items() if key not in overrides}
            if ambiguous:
                differ = "; ".join(f"{key}: {values}" for key, values in ambiguous.items())
                raise ConfigError(
                    f"method {self.name!r}: the default of {sorted(ambiguous)} differs by framework ({differ}); "
                    f"call options(framework) with one of {list(self.frameworks)}, or set {sorted(ambiguous)} yourself"
                )
        else:
            options.update(self.framework_defaults.get(framework, {}))
        options.update(overrides)
        return options

    def check(self, section: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Run the method's recipe cross-checks on a recipe section; ``(field, message)`` pairs."""
        return [error for check in self.checks for error in check(section)]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (what ``prunekit methods --json`` prints)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "frameworks": list(self.frameworks),
            "summary": self.summary,
            "amount": self.amount,
            "aliases": list(self.aliases),
            "defaults": dict(self.defaults),
            "by_framework": self.by_framework(),
            "sensitivity": list(self.layer_pruners),
        }
