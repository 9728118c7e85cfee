"""Import an optional framework, or say which extra installs it."""

from __future__ import annotations

import importlib
from types import ModuleType

from prunekit.errors import MissingDependencyError


def require(module: str, extra: str) -> ModuleType:
    """Import ``module``; if it is missing, raise an error naming the pip extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(f"{module!r} is not installed; install it with: pip install 'prunekit[{extra}]'") from exc
