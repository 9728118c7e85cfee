"""Build typed dataclasses from plain dicts (parsed YAML), checking every field before anything runs.

Each field is checked against its type hint (``str``, ``int``, ``float``, ``bool``, ``list[T]``,
``dict[str, T]``, ``Optional[T]``, ``Literal[...]``, nested dataclasses) and then against the
``check`` callable in its metadata. Unknown keys (with a "did you mean"), missing required
fields and bad values are all collected, each with its field path (``prune.sparsities[1]``), and
raised together as one :class:`RecipeError`.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, Union

from prunekit.errors import ConfigError

Check = Callable[[Any], Union[str, None]]


class RecipeError(ConfigError):
    """A recipe has one or more bad fields; ``errors`` lists ``(field path, message)`` pairs."""

    def __init__(self, errors: list[tuple[str, str]], source: str = "recipe"):
        self.errors = errors
        lines = "\n".join(f"  {path or '(top level)'}: {message}" for path, message in errors)
        super().__init__(f"{source} has {len(errors)} error(s):\n{lines}")


def checked(check: Check, **kwargs: Any) -> Any:
    """A dataclass field whose value is also passed to ``check`` (returns an error message or None).

    Example::

        epochs: int = checked(lambda v: None if v >= 0 else "should be >= 0", default=10)
    """
    return dataclasses.field(metadata={"check": check}, **kwargs)


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint) if a is not type(None)) + " or null"
    if origin in (list, dict):
        return f"{origin.__name__} of {_type_name(typing.get_args(hint)[-1])}"
    return "a mapping" if dataclasses.is_dataclass(hint) else getattr(hint, "__name__", str(hint))


def _convert(hint: Any, value: Any, path: str, errors: list[tuple[str, str]]) -> Any:
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        inner = [o for o in options if o is not type(None)]
        return _convert(inner[0], value, path, errors) if len(inner) == 1 else value
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
            errors.append(
                (path, f"should be {_type_name(hint)}, got {value!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            )
        return value
    if origin is list:
        if not isinstance(value, list):
            errors.append((path, f"should be a {_type_name(hint)}, got {type(value).__name__} {value!r}"))
            return value
        (item,) = typing.get_args(hint)
        return [_convert(item, v, f"{path}[{i}]", errors) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            errors.append((path, f"should be a mapping, got {type(value).__name__} {value!r}"))
            return value
        _, item = typing.get_args(hint)
        return {str(k): _convert(item, v, f"{path}.{k}", errors) for k, v in value.items()}
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return build(hint, value, path, errors)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            errors.append((path, f"should be a number, got {type(value).__name__} {value!r}"))
            return value
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append((path, f"should be an integer, got {type(value).__name__} {value!r}"))
        return value
    if hint in (str, bool):
        if not isinstance(value, hint):
            errors.append(
                (path, f"should be {'a string' if hint is str else 'true or false'}, got {type(value).__name__} {value!r}")
            )
        return value
    raise TypeError(f"unsupported type hint {hint!r} at {path}")  # a bug in a config class, not in the recipe


def build(cls: type, data: Any, path: str = "", errors: list[tuple[str, str]] | None = None) -> Any:
    """Build dataclass ``cls`` from ``data``, appending ``(path, message)`` to ``errors`` for every problem.

    Without ``errors`` the problems are raised at once as a :class:`RecipeError`.

    Example::

        recipe = build(Recipe, yaml.safe_load(text))   # raises RecipeError listing every bad field
    """
    own = errors is None
    errors = [] if errors is None else errors
    prefix = f"{path}." if path else ""
    if not isinstance(data, dict):
        errors.append((path, f"should be a mapping of fields, got {type(data).__name__} {data!r}"))
        if own:
            raise RecipeError(errors)
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; known fields: {', '.join(fields)}"
            errors.append((f"{prefix}{key}", f"unknown field{hint}"))
    values = {}
    for name, spec in fields.items():
        where = f"{prefix}{name}"
        if name not in data:
            if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                errors.append((where, f"is required ({_type_name(hints[name])})"))
            continue
        before = len(errors)
        value = _convert(hints[name], data[name], where, errors)
        check = spec.metadata.get("check")
        if check is not None and len(errors) == before:
            message = check(value)
            if message:
                errors.append((where, message))
        values[name] = value
    if own and errors:
        raise RecipeError(errors)
    if any(p == path or p.startswith(prefix) for p, _ in errors):
        return None
    return cls(**values)


def to_plain(value: Any) -> Any:
    """A dataclass tree back to plain dicts and lists (for YAML/JSON output).

    Example::

        yaml.safe_dump(to_plain(recipe))
    """
    if dataclasses.is_dataclass(value):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value) if not f.metadata.get("internal")}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    return value
