"""Progress over decoder blocks: a rich bar on a terminal, one plain line per block otherwise (logs, CI)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def block_progress(total: int, description: str, enabled: bool = True) -> Iterator[Callable[[str], None]]:
    """Yield ``advance(note)``, called once per finished block.

    Example::

        with block_progress(len(blocks), "pruning") as advance:
            for i in range(len(blocks)):
                advance(f"block {i}")
    """
    if not enabled:
        yield lambda note: None
        return
    if sys.stderr.isatty():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[note]}"),
            transient=False,
        ) as bar:
            task = bar.add_task(description, total=total, note="")
            yield lambda note: bar.update(task, advance=1, note=note)
        return
    done = [0]

    def advance(note: str) -> None:
        done[0] += 1
        print(f"{description}: block {done[0]}/{total} {note}", file=sys.stderr, flush=True)

    yield advance
