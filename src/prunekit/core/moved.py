"""Old module paths that keep working for one release: the old module becomes the new one, with a warning."""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Callable
from typing import Any


def alias_module(old: str, new: str) -> None:
    """Make ``import old`` give module ``new`` and warn that the path moved.

    Example (the whole body of a moved module's old file)::

        alias_module(__name__, "prunekit.tradeoffs.budget")
    """
    warnings.warn(
        f"{old} moved to {new}; import it from there (the old path goes away in the next release)",
        DeprecationWarning,
        stacklevel=3,
    )
    sys.modules[old] = importlib.import_module(new)


def moved_names(package: str, homes: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` serving names that left ``package``'s namespace, with a warning.

    ``homes`` maps each name to the module that now holds it. Example (in a package's ``__init__``)::

        __getattr__ = moved_names(__name__, {"plan_of": "prunekit.torch.structured.plan"})
    """

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        warnings.warn(
            f"{package}.{name} moved to {home}.{name}; import it from there (the old name goes away in the next release)",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(home), name)

    return __getattr__
