"""Renamed arguments that keep working for one release, with a warning that names the new one."""

from __future__ import annotations

import warnings
from collections.abc import Sequence


def renamed_globs(new: Sequence[str], old: Sequence[str] | None, old_name: str, new_name: str, where: str) -> list[str]:
    """The globs given under ``new_name``, plus those still given under the deprecated ``old_name``.

    Example::

        exclude = renamed_globs(exclude, ignore, "ignore", "exclude", "Pruner")
    """
    if old is None:
        return list(new)
    warnings.warn(
        f"{where}: {old_name}= is now {new_name}= (the old name goes away in the next release)", DeprecationWarning, stacklevel=3
    )
    return [*new, *old]
