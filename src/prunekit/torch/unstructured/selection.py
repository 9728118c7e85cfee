"""Choosing parameters by module type, name glob or predicate, with errors for globs that match nothing."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeVar, Union

import torch
from torch import nn

from prunekit.core.deprecation import renamed_globs
from prunekit.errors import ConfigError, LayerNotFoundError

#: Module types whose ``weight`` is pruned when no targets are given.
DEFAULT_TARGET_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Embedding,
)

Target = Union[str, type]
Targets = Union[None, Sequence[Target], Callable[[str, nn.Parameter], bool]]
T = TypeVar("T")


def _owners(param_name: str) -> list[str]:
    """Names of the module owning a parameter and of all its ancestors: 'a.b.weight' -> ['a.b', 'a']."""
    parts = param_name.split(".")[:-1]
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)]


def _typed_weights(model: nn.Module, types: tuple[type, ...], prefix: str = "") -> dict[str, nn.Parameter]:
    found = {}
    for module_name, module in model.named_modules(prefix=prefix):
        weight = getattr(module, "weight", None)
        if isinstance(module, types) and isinstance(weight, nn.Parameter):
            found[f"{module_name}.weight" if module_name else "weight"] = weight
    return found


def _suggest(names: Iterable[str], limit: int = 8) -> str:
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _matching_pattern(model: nn.Module, pattern: str) -> dict[str, nn.Parameter]:
    """Parameters whose name matches, else the weights of matching modules (and their typed children)."""
    params = dict(model.named_parameters())
    by_name = {name: p for name, p in params.items() if fnmatch.fnmatchcase(name, pattern)}
    if by_name:
        return by_name
    found: dict[str, nn.Parameter] = {}
    for module_name, module in model.named_modules():
        if module_name and fnmatch.fnmatchcase(module_name, pattern):
            own = getattr(module, "weight", None)
            if isinstance(own, nn.Parameter):
                found[f"{module_name}.weight"] = own
            found.update(_typed_weights(module, DEFAULT_TARGET_TYPES, prefix=module_name))
    return found


def select_parameters(
    model: nn.Module,
    targets: Targets = None,
    exclude: Sequence[str] = (),
    *,
    ignore: Sequence[str] | None = None,
) -> dict[str, nn.Parameter]:
    """The parameters to prune, by qualified name, in model order.

    ``targets`` is ``None`` (the weights of Linear, Conv*, ConvTranspose* and Embedding layers),
    a sequence of module types and/or name globs (a glob matching a parameter name selects it;
    one matching a module name selects that module's weight and those of prunable layers
    inside it), or a predicate ``(name, param) -> bool``. ``exclude`` holds globs of parameter
    or module names to leave alone (``ignore`` is its deprecated old name). Every glob must match something.

    Example::

        select_parameters(model, ["features.*", nn.Linear], exclude=["classifier"])
    """
    exclude = renamed_globs(exclude, ignore, "ignore", "exclude", "select_parameters")
    params = dict(model.named_parameters())
    if targets is None:
        chosen = _typed_weights(model, DEFAULT_TARGET_TYPES)
    elif callable(targets) and not isinstance(targets, type):
        chosen = {name: p for name, p in params.items() if targets(name, p)}
    else:
        if isinstance(targets, (str, type)):
            targets = [targets]
        chosen = {}
        types = tuple(t for t in targets if isinstance(t, type))
        if types:
            if not all(issubclass(t, nn.Module) for t in types):
                raise ConfigError(f"target types should be nn.Module subclasses, got {types}")
            chosen.update(_typed_weights(model, types))
        for pattern in targets:
            if isinstance(pattern, type):
                continue
            if not isinstance(pattern, str):
                raise ConfigError(f"a target should be a name glob, a module type or a predicate, got {pattern!r}")
            matched = _matching_pattern(model, pattern)
            if not matched:
                raise LayerNotFoundError(f"target {pattern!r} matches no parameter or module; parameters are: {_suggest(params)}")
            chosen.update(matched)
    for pattern in exclude:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in params) and not any(
            fnmatch.fnmatchcase(m, pattern) for m, _ in model.named_modules() if m
        ):
            raise LayerNotFoundError(f"exclude pattern {pattern!r} matches no parameter or module of the model")
        chosen = {n: p for n, p in chosen.items() if not matches_name(n, pattern)}
    if not chosen:
        raise ConfigError("no parameter left to prune: check targets and exclude")
    for name, param in chosen.items():
        if not torch.is_floating_point(param):
            raise ConfigError(f"parameter {name!r} has dtype {param.dtype}; only floating-point tensors can be pruned")
    # a tied weight (an LM head sharing the embedding) is one tensor: keep it once, under its state_dict name
    canonical = {id(p): name for name, p in reversed(list(params.items()))}
    chosen = {canonical.get(id(p), name): p for name, p in chosen.items()}
    order = {name: i for i, name in enumerate(params)}
    return dict(sorted(chosen.items(), key=lambda item: order[item[0]]))


def matches_name(param_name: str, pattern: str) -> bool:
    """Whether a glob matches a parameter's name or the name of a module that owns it."""
    return any(fnmatch.fnmatchcase(name, pattern) for name in [param_name, *_owners(param_name)])


def resolve_overrides(names: Sequence[str], overrides: Mapping[str, T] | None) -> dict[str, T]:
    """Map each selected parameter to its override value; later globs win; unused globs raise."""
    resolved: dict[str, T] = {}
    for pattern, value in (overrides or {}).items():
        hits = [name for name in names if matches_name(name, pattern)]
        if not hits:
            raise LayerNotFoundError(f"override {pattern!r} matches none of the pruned parameters: {_suggest(names)}")
        resolved.update({name: value for name in hits})
    return resolved
