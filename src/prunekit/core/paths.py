"""Guards on the paths a command writes: never over one of its own inputs."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from prunekit.errors import ConfigError


def _same(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def refuse_overwriting_inputs(
    outputs: Iterable[str | os.PathLike[str]], inputs: Iterable[str | os.PathLike[str] | None], fix: str
) -> None:
    """Raise :class:`ConfigError` when a file about to be written is one of the inputs (same file, links resolved).

    ``fix`` says what the user should change (e.g. ``"choose another --out"``).

    Example::

        refuse_overwriting_inputs(["out/pruned.onnx"], ["out/pruned.onnx"], "choose another --out")   # raises
    """
    given = [Path(p) for p in inputs if p is not None]
    for output in outputs:
        target = Path(output)
        for source in given:
            if _same(target, source) or target.resolve() == source.resolve():
                raise ConfigError(f"{target} would overwrite the input file {source}; {fix}")
