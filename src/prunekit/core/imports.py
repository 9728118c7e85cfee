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
