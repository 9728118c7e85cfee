"""Progress for every long step: a live rich bar on a terminal, periodic plain lines otherwise.

Off a terminal (CI logs, ``demo > log 2>&1``) a heartbeat thread writes one line every
``interval`` seconds for the innermost running step, with its count, elapsed time and ETA, so a
log never stays silent for long even while one step (an export, a latency run) takes a while.
Steps nest: an outer ``progress("demo", total=6)`` around inner ``progress("dense", total=500)``
shows the inner one while it runs and the outer one in the gaps between inner steps.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO

DEFAULT_INTERVAL = 5.0  # seconds between plain lines; PRUNEKIT_PROGRESS_INTERVAL overrides it


@dataclass
class _Task:
    description: str
    total: int | None
    done: int = 0
    note: str = ""
    started: float = field(default_factory=time.monotonic)
    rich_id: Any = None


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def format_line(description: str, done: int, total: int | None, elapsed: float, note: str = "") -> str:
    """The plain progress line: ``dense: 120/500 (24%) elapsed 0:12 eta 0:38``.

    Example::

        format_line("dense", 1, 4, 10.0)  # 'dense: 1/4 (25%) elapsed 0:10 eta 0:30'
    """
    if total:
        eta = _clock(elapsed / done * (total - done)) if done else "?"
        text = f"{description}: {done}/{total} ({100 * done // total}%) elapsed {_clock(elapsed)} eta {eta}"
    else:
        text = (
            f"{description}: {done} done, elapsed {_clock(elapsed)}"
            if done
            else f"{description}: running, elapsed {_clock(elapsed)}"
        )
    return f"{text} {note}".rstrip()


class _Display:
    """The one display shared by nested steps: a rich Progress or a heartbeat thread."""

    def __init__(self, stream: TextIO, interval: float):
        self.stream, self.interval = stream, interval
        self.tasks: list[_Task] = []
        self.lock = threading.Lock()
        self.bar: Any = None
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.last_line = time.monotonic()
        if _is_terminal(stream):
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[note]}"),
                console=Console(file=stream),
                transient=True,
            )
            self.bar.start()
        else:
            self.thread = threading.Thread(target=self._beat, name="prunekit-progress", daemon=True)
            self.thread.start()

    def write(self, line: str) -> None:
        self.last_line = time.monotonic()
        print(line, file=self.stream, flush=True)

    def _beat(self) -> None:
        while not self.stop.wait(min(self.interval, 1.0)):
            with self.lock:
                if self.tasks and time.monotonic() - self.last_line >= self.interval:
                    task = self.tasks[-1]
                    self.write(format_line(task.description, task.done, task.total, time.monotonic() - task.started, task.note))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
        self.stop.set()
        if self.thread is not None:
            self.thread.join()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


_display: _Display | None = None
_display_lock = threading.Lock()


def _interval() -> float:
    raw = os.environ.get("PRUNEKIT_PROGRESS_INTERVAL")
    try:
        return float(raw) if raw else DEFAULT_INTERVAL
    except ValueError:
        return DEFAULT_INTERVAL


@contextmanager
def progress(
    description: str,
    total: int | None = None,
    *,
    enabled: bool = True,
    stream: TextIO | None = None,
    interval: float | None = None,
) -> Iterator[Callable[..., None]]:
    """Show progress of one step; yields ``advance(steps=1, note="")``.

    On a terminal: a live bar (with ETA when ``total`` is known). Otherwise: a line when the step
    starts, one every ``interval`` seconds (default 5, or ``PRUNEKIT_PROGRESS_INTERVAL``) while it
    runs, and one when it ends, each with elapsed time and ETA. ``enabled=False`` shows nothing.
    The outermost call picks the stream (default ``sys.stderr``) and the interval.

    Example::

        with progress("fine-tune", total=len(loader)) as advance:
            for batch in loader:
                advance()
    """
    if not enabled:
        yield lambda steps=1, note="": None
        return
    global _display
    with _display_lock:
        outermost = _display is None
        if _display is None:
            _display = _Display(stream or sys.stderr, interval if interval is not None else _interval())
        display = _display
    task = _Task(description, total)
    with display.lock:
        display.tasks.append(task)
        if display.bar is not None:
            task.rich_id = display.bar.add_task(description, total=total, note="")
        else:
            display.write(f"{description}: started" + (f" ({total} steps)" if total else ""))

    def advance(steps: int = 1, note: str = "") -> None:
        with display.lock:
            task.done += steps
            task.note = note or task.note
            if display.bar is not None:
                display.bar.update(task.rich_id, advance=steps, note=task.note)

    try:
        yield advance
    finally:
        with display.lock:
            display.tasks.remove(task)
            if display.bar is not None:
                display.bar.remove_task(task.rich_id)
            else:
                elapsed = time.monotonic() - task.started
                counted = f" {task.done}/{task.total}" if task.total else ""
                display.write(f"{description}: done{counted} in {_clock(elapsed)}")
        if outermost:
            with _display_lock:
                _display = None
            display.close()
