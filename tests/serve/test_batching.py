"""Micro-batching: concurrent requests stacked into one inference call, split back exactly."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from prunekit.serve.batching import MicroBatcher, OverloadedError


class Recorder:
    """A fake runtime: doubles ``x``, records the rows of each call, refuses negative inputs."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.release = threading.Event()
        self.release.set()

    def __call__(self, feeds):
        self.release.wait(10)
        x = feeds["x"]
        self.calls.append(x.shape[0])
        if (x < 0).any():
            raise ValueError("negative input")
        return {"y": x * 2, "first": x[:, :1]}


def rows(start: int, count: int, width: int = 3) -> np.ndarray:
    return np.arange(start, start + count * width, dtype=np.float32).reshape(count, width)


async def submit_all(batcher: MicroBatcher, requests: list[np.ndarray]) -> list:
    return await asyncio.gather(*(batcher.submit({"x": r}) for r in requests), return_exceptions=True)


def run(batcher_kwargs: dict, requests: list[np.ndarray], recorder: Recorder | None = None):
    recorder = recorder or Recorder()
    with ThreadPoolExecutor(2) as pool:
        batcher = MicroBatcher(recorder, pool, **batcher_kwargs)
        results = asyncio.run(submit_all(batcher, requests))
    return recorder, results


def test_concurrent_requests_share_one_inference_call():
    requests = [rows(10 * i, 1) for i in range(8)]
    recorder, results = run({"max_batch_size": 32, "max_wait_s": 0.05}, requests)
    assert recorder.calls == [8]
    for request, result in zip(requests, results):
        np.testing.assert_array_equal(result["y"], request * 2)
        np.testing.assert_array_equal(result["first"], request[:, :1])


def test_each_request_gets_its_own_rows_back_from_a_shared_batch():
    requests = [rows(0, 1), rows(100, 3), rows(200, 2)]
    recorder, results = run({"max_batch_size": 32, "max_wait_s": 0.05}, requests)
    assert recorder.calls == [6]
    assert [r["y"].shape[0] for r in results] == [1, 3, 2]
    np.testing.assert_array_equal(results[1]["y"], rows(100, 3) * 2)


def test_batches_never_exceed_max_batch_size():
    recorder, results = run({"max_batch_size": 8, "max_wait_s": 0.05}, [rows(i, 3) for i in range(10)])
    assert max(recorder.calls) <= 8 and sum(recorder.calls) == 30
    assert all(not isinstance(r, BaseException) for r in results)


def test_a_request_larger_than_max_batch_size_runs_alone():
    recorder, results = run({"max_batch_size": 4, "max_wait_s": 0.05}, [rows(0, 10)])
    assert recorder.calls == [10]
    np.testing.assert_array_equal(results[0]["y"], rows(0, 10) * 2)


def test_requests_with_different_row_shapes_are_not_stacked():
    recorder, results = run({"max_batch_size": 32, "max_wait_s": 0.05}, [rows(0, 1, 3), rows(0, 1, 5), rows(9, 1, 3)])
    assert sorted(recorder.calls) == [1, 2]
    assert results[1]["y"].shape == (1, 5)


def test_a_failing_request_does_not_fail_its_batch_mates():
    requests = [rows(0, 1), -rows(1, 1), rows(5, 2)]
    recorder, results = run({"max_batch_size": 32, "max_wait_s": 0.05}, requests)
    assert recorder.calls[0] == 4  # the batch, then each request alone
    assert isinstance(results[1], ValueError)
    np.testing.assert_array_equal(results[2]["y"], rows(5, 2) * 2)


def test_max_batch_size_one_runs_every_request_alone():
    recorder, _ = run({"max_batch_size": 1, "max_wait_s": 0.0}, [rows(i, 1) for i in range(5)])
    assert recorder.calls == [1, 1, 1, 1, 1]


def test_requests_queued_while_the_workers_are_busy_leave_together():
    recorder = Recorder()
    recorder.release.clear()

    async def scenario(batcher: MicroBatcher):
        first = asyncio.ensure_future(batcher.submit({"x": rows(0, 1)}))
        await asyncio.sleep(0.05)  # the first request now occupies the only slot
        later = [asyncio.ensure_future(batcher.submit({"x": rows(i, 1)})) for i in range(6)]
        await asyncio.sleep(0.05)
        recorder.release.set()
        return await asyncio.gather(first, *later)

    with ThreadPoolExecutor(1) as pool:
        batcher = MicroBatcher(recorder, pool, max_batch_size=32, max_wait_s=0.0, max_concurrent_batches=1)
        asyncio.run(scenario(batcher))
    assert recorder.calls == [1, 6]


def test_a_full_queue_refuses_new_requests():
    recorder = Recorder()
    recorder.release.clear()

    async def scenario(batcher: MicroBatcher):
        running = asyncio.ensure_future(batcher.submit({"x": rows(0, 1)}))
        await asyncio.sleep(0.05)
        queued = [asyncio.ensure_future(batcher.submit({"x": rows(i, 1)})) for i in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(OverloadedError, match="2 requests are already queued"):
            await batcher.submit({"x": rows(9, 1)})
        recorder.release.set()
        await asyncio.gather(running, *queued)

    with ThreadPoolExecutor(1) as pool:
        asyncio.run(scenario(MicroBatcher(recorder, pool, max_batch_size=1, max_queued_requests=2)))


def test_on_batch_reports_the_rows_of_each_call():
    seen: list[int] = []
    run({"max_batch_size": 32, "max_wait_s": 0.05, "on_batch": lambda n, seconds: seen.append(n)}, [rows(i, 2) for i in range(3)])
    assert seen == [6]


def test_rejects_a_max_batch_size_below_one():
    with pytest.raises(ValueError, match="max_batch_size should be >= 1, got 0"):
        MicroBatcher(Recorder(), ThreadPoolExecutor(1), max_batch_size=0)
