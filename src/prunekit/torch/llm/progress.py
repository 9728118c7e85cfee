"""Progress over decoder blocks, through the shared :func:`prunekit.core.progress.progress` display."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prunekit.core.progress import progress


@contextmanager
def block_progress(total: int, description: str, enabled: bool = True) -> Iterator[Callable[[str], None]]:
    """Yield ``advance(note)``, called once per finished block.

    Example::

        with block_progress(len(blocks), "pruning") as advance:
            for i in range(len(blocks)):
                advance(f"block {i}")
    """
    with progress(description, total, enabled=enabled) as advance:
        yield lambda note: advance(1, note)
