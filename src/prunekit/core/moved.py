"""Old module paths that keep working for one release: the old module becomes the new one, with a warning."""

from __future__ import annotations

import importlib
import sys
import warnings


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
