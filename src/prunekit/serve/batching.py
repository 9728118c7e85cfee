"""Dynamic micro-batching: concurrent requests for one model are stacked into one inference call.

A request waits at most ``max_wait_s`` (counted from its arrival) for others to join it, and a
batch holds at most ``max_batch_size`` rows (a larger request runs alone). At most
``max_concurrent_batches`` batches of one model run at once, each on a worker thread of the
executor, so the event loop never runs inference; while every slot is busy, arriving requests
queue and leave together in the next batch. Requests join a batch only when their inputs agree
apart from the batch dimension. If a batch fails, its requests are retried one by one so that one
bad request cannot fail the others. With ``max_batch_size=1`` this is a plain bounded work queue.

Example::

    batcher = MicroBatcher(runtime.run, executor, max_batch_size=32, max_wait_s=0.002)
    outputs = await batcher.submit({"x": rows})      # {"y": array with len(rows) rows}
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from prunekit.errors import ConfigError, PrunekitError

RunFn = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]
Outputs = dict[str, np.ndarray]


class OverloadedError(PrunekitError):
    """The model's request queue is full; the client should retry later."""


class BatchShapeError(PrunekitError):
    """The model's outputs do not have one row per input row, so its requests cannot be stacked."""


@dataclass(eq=False)
class _Pending:
    feeds: Mapping[str, np.ndarray]
    rows: int
    key: tuple[tuple[str, tuple[int, ...], str], ...]
    future: asyncio.Future[Outputs]
    arrival: float = field(default_factory=time.monotonic)


def _key(feeds: Mapping[str, np.ndarray]) -> tuple[tuple[str, tuple[int, ...], str], ...]:
    return tuple(sorted((name, tuple(a.shape[1:]), a.dtype.str) for name, a in feeds.items()))


def _split(outputs: Outputs, counts: list[int]) -> list[Outputs]:
    total = sum(counts)
    for name, value in outputs.items():
        if value.ndim == 0 or value.shape[0] != total:
            raise BatchShapeError(
                f"output {name!r} has shape {list(value.shape)} for a batch of {total} rows; its first dimension is not the batch"
            )
    parts, start = [], 0
    for count in counts:
        parts.append({name: value[start : start + count] for name, value in outputs.items()})
        start += count
    return parts


class MicroBatcher:
    """Stacks concurrent requests into batches and runs them on an executor (module docstring).

    ``on_batch(rows, seconds)`` is called on the event loop after each inference call.

    Example::

        batcher = MicroBatcher(runtime.run, ThreadPoolExecutor(2), max_batch_size=16,
                               max_wait_s=0.001, max_concurrent_batches=2)
        outputs = await batcher.submit({"x": np.zeros((3, 4), np.float32)})
    """

    def __init__(
        self,
        run: RunFn,
        executor: Executor,
        max_batch_size: int = 32,
        max_wait_s: float = 0.002,
        max_concurrent_batches: int = 1,
        max_queued_requests: int = 1024,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ConfigError(f"max_batch_size should be >= 1, got {max_batch_size}")
        if max_wait_s < 0:
            raise ConfigError(f"max_wait_s should be >= 0, got {max_wait_s}")
        if max_concurrent_batches < 1:
            raise ConfigError(f"max_concurrent_batches should be >= 1, got {max_concurrent_batches}")
        if max_queued_requests < 1:
            raise ConfigError(f"max_queued_requests should be >= 1, got {max_queued_requests}")
        self._run = run
        self._executor = executor
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queued_requests = max_queued_requests
        self._on_batch = on_batch
        self._concurrency = max_concurrent_batches
        self._slots: asyncio.Semaphore | None = None
        self._queue: deque[_Pending] = deque()
        self._rows: Counter[tuple] = Counter()
        self._wakeup: asyncio.Event | None = None
        self._collector: asyncio.Task[None] | None = None

    @property
    def queued(self) -> int:
        """Requests waiting for a batch."""
        return len(self._queue)

    async def submit(self, feeds: Mapping[str, np.ndarray]) -> Outputs:
        """Queue one request (every input with the same number of rows) and await its outputs.

        Raises :class:`OverloadedError` when ``max_queued_requests`` requests already wait, and
        whatever the runtime raised for this request.
        """
        if len(self._queue) >= self.max_queued_requests:
            raise OverloadedError(f"{len(self._queue)} requests are already queued for this model; retry later")
        loop = asyncio.get_running_loop()
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._concurrency)
            self._wakeup = asyncio.Event()
        rows = next(iter(feeds.values())).shape[0] if feeds else 0
        pending = _Pending(feeds, rows, _key(feeds), loop.create_future())
        self._queue.append(pending)
        self._rows[pending.key] += rows
        assert self._wakeup is not None
        self._wakeup.set()
        if self._collector is None:
            self._collector = loop.create_task(self._collect())
        return await pending.future

    async def _collect(self) -> None:
        """Form batches while requests are queued; exit when the queue is empty."""
        assert self._slots is not None and self._wakeup is not None
        try:
            while True:
                await self._slots.acquire()
                if not self._queue:
                    self._slots.release()
                    return
                first = self._queue[0]
                deadline = first.arrival + self.max_wait_s
                while self._rows[first.key] < self.max_batch_size:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), remaining)
                    except asyncio.TimeoutError:
                        break
                self._dispatch(self._take(first.key))
        finally:
            self._collector = None

    def _take(self, key: tuple) -> list[_Pending]:
        batch: list[_Pending] = []
        rows = 0
        kept: deque[_Pending] = deque()
        while self._queue:
            item = self._queue.popleft()
            fits = not batch or rows + item.rows <= self.max_batch_size
            if item.key == key and fits:
                batch.append(item)
                rows += item.rows
                self._rows[key] -= item.rows
            else:
                kept.append(item)
                if item.key == key and not fits:
                    break  # first come, first served: the next batch starts with this one
        kept.extend(self._queue)
        self._queue = kept
        if self._rows[key] <= 0:
            del self._rows[key]
        return batch

    def _dispatch(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        live = [item for item in batch if not item.future.done()]  # cancelled by a disconnected client
        if not live:
            assert self._slots is not None
            self._slots.release()
            return
        feeds = [item.feeds for item in live]
        started = time.perf_counter()
        try:
            job = loop.run_in_executor(self._executor, self._run_batch, feeds)
        except RuntimeError as exc:  # the executor is shut down: the server is stopping
            job = loop.create_future()
            job.set_exception(exc)
        job.add_done_callback(lambda done: self._finish(live, done, started))

    def _run_batch(self, feeds: list[Mapping[str, np.ndarray]]) -> list[Outputs | BaseException]:
        """On a worker thread: run the stacked batch, or each request alone if that fails."""
        if len(feeds) == 1:
            try:
                return [self._run(feeds[0])]
            except Exception as exc:
                return [exc]
        try:
            stacked = {name: np.concatenate([f[name] for f in feeds]) for name in feeds[0]}
            return list(_split(self._run(stacked), [next(iter(f.values())).shape[0] for f in feeds]))
        except Exception:
            results: list[Outputs | BaseException] = []
            for one in feeds:
                try:
                    results.append(self._run(one))
                except Exception as exc:
                    results.append(exc)
            return results

    def _finish(self, batch: list[_Pending], done: asyncio.Future, started: float) -> None:
        assert self._slots is not None
        self._slots.release()
        seconds = time.perf_counter() - started
        try:
            results = done.result()
        except BaseException as exc:  # the executor was shut down
            results = [exc] * len(batch)
        for item, result in zip(batch, results):
            if item.future.done():
                continue
            if isinstance(result, BaseException):
                item.future.set_exception(result)
            else:
                item.future.set_result(result)
        if self._on_batch is not None:
            self._on_batch(sum(item.rows for item in batch), seconds)
