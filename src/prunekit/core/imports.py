"""Resolve ``"package.module:attribute"`` import paths (CLI ``--factory`` options, recipe fields)."""

from __future__ import annotations

import importlib
from typing import Any

from prunekit.errors import ConfigError


def resolve_import(spec: str) -> Any:
    """The object named by ``"package.module:attribute"`` (dotted attributes allowed).

    Example::

        resolve_import("prunekit.torch:DigitsCNN")
    """
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise ConfigError(f"should look like 'package.module:callable', got {spec!r}")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import module {module_name!r} ({exc})") from None
    for attr in attr_path.split("."):
        if not hasattr(target, attr):
            raise ConfigError(f"module {module_name!r} has no attribute {attr_path!r}")
        target = getattr(target, attr)
    if not callable(target):
        raise ConfigError(f"{spec!r} is not callable")
    return target


#: Module prefixes a recipe may import from without being told to trust anything else.
BUILTIN_TRUSTED = ("prunekit",)

#: Environment variable naming extra trusted modules (comma separated), like ``--trust-module``.
TRUST_ENV = "PRUNEKIT_TRUST_MODULES"


def trusted_modules(extra: tuple[str, ...] | list[str] = ()) -> tuple[str, ...]:
    """prunekit's own package, the modules in ``$PRUNEKIT_TRUST_MODULES`` and ``extra``.

    Example::

        trusted_modules(["mypkg.models"])   # ('prunekit', 'mypkg.models')
    """
    import os

    from_env = [m.strip() for m in os.environ.get(TRUST_ENV, "").split(",") if m.strip()]
    return tuple(dict.fromkeys([*BUILTIN_TRUSTED, *from_env, *extra]))


def _within(module: str, trusted: tuple[str, ...]) -> bool:
    return any(module == t or module.startswith(t + ".") for t in trusted)


def check_trusted(spec: str, trusted: tuple[str, ...]) -> str | None:
    """Why ``spec`` may not be imported from a shared file (a recipe), or None when it may; imports nothing.

    Only modules in ``trusted`` (and their submodules) are allowed, and the attribute path may not
    start with ``_`` (no dunders, no private helpers).

    Example::

        check_trusted("subprocess:getoutput", ("prunekit",))   # "module 'subprocess' is not trusted ..."
    """
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        return f"should look like 'package.module:callable', got {spec!r}"
    if not _within(module_name, trusted):
        return (
            f"module {module_name!r} is not trusted: a recipe may only import callables from {list(trusted)}; "
            f"if you trust this code, pass --trust-module {module_name.split('.')[0]} (or set {TRUST_ENV})"
        )
    private = [a for a in attr_path.split(".") if not a or a.startswith("_")]
    if private:
        return f"{spec!r} names a private or special attribute {private[0]!r}; name a public callable"
    return None


def resolve_trusted_import(spec: str, trusted: tuple[str, ...]) -> Any:
    """:func:`resolve_import` for import paths read from files: refused unless ``spec`` is in a trusted module.

    The module is checked before it is imported, and the callable it resolves to must be defined
    in a trusted module too (``prunekit.x:os.system`` is refused although ``prunekit.x`` imports ``os``).

    Example::

        resolve_trusted_import("prunekit.torch:DigitsCNN", trusted_modules())
    """
    reason = check_trusted(spec, trusted)
    if reason:
        raise ConfigError(reason)
    target = resolve_import(spec)
    module_name, _, attr_path = spec.partition(":")
    owner = getattr(target, "__module__", None)
    if not isinstance(owner, str) or not _within(owner, trusted):
        raise ConfigError(
            f"{spec!r} resolves to an object defined in {owner!r}, outside the trusted modules {list(trusted)}; "
            "name the callable where it is defined, in a trusted module"
        )
    return target
