"""Latency measurement for benchmarks on shared, noisy CPUs.

Variants are timed **interleaved**, call by call (A B A B …, rotating the order every round) so
drifts of the machine hit every variant alike; each round records the median of several calls,
and a variant's latency is the minimum of its per-round medians (``best``) alongside the median
of all calls (``median``). glibc's allocator can hand large activation buffers back to the OS
after every operator, and the page faults that follow can double CPU latency and flatter a
smaller model, so :func:`pin_malloc_settings` fixes the thresholds (by re-executing the script
with ``GLIBC_TUNABLES``) and :func:`malloc_settings` reports what was used.

Example::

    pin_malloc_settings()
    timings = time_interleaved({"dense": lambda: dense(x), "pruned": lambda: pruned(x)}, rounds=8, repeats=5)
    speedup = timings["dense"].best / timings["pruned"].best
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch

# mmap_threshold at glibc's 64-bit maximum (32 MiB) and a trim threshold far above any
# activation: buffers below 32 MiB are reused from the heap instead of being unmapped and
# faulted back in on every call.
PINNED_TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=17179869184"
_MALLOC_ENV = (
    "GLIBC_TUNABLES",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_ARENA_MAX",
    "LD_PRELOAD",
)


@dataclass(frozen=True)
class Timing:
    """Seconds per call of one variant: every call, and each round's median.

    ``samples``/``round_medians`` are wall-clock; ``cpu_samples``/``cpu_round_medians`` are the
    CPU time of the calling thread, which is all of the compute when torch runs on one thread and
    is unaffected by other processes competing for the cores (only by their cache traffic).
    """

    samples: tuple[float, ...]
    round_medians: tuple[float, ...]
    cpu_samples: tuple[float, ...] = ()
    cpu_round_medians: tuple[float, ...] = ()

    @property
    def median(self) -> float:
        """Median over every timed call."""
        return statistics.median(self.samples)

    @property
    def best(self) -> float:
        """Minimum of the per-round medians: the least disturbed round."""
        return min(self.round_medians)

    @property
    def cpu_best(self) -> float:
        """Minimum of the per-round medians of the calling thread's CPU time."""
        return min(self.cpu_round_medians)


def time_interleaved(
    variants: Mapping[str, Callable[[], object]], rounds: int = 8, repeats: int = 5, warmup: int = 2
) -> dict[str, Timing]:
    """Time every variant call by call, interleaved (A B A B …), in ``rounds`` rounds of ``repeats``.

    Each round times ``repeats`` calls of every variant, alternating variants call by call and
    rotating their order from round to round so none always runs first; a round's median per
    variant therefore covers the same stretch of time for all of them.

    Example::

        t = time_interleaved({"a": f, "b": g}, rounds=6, repeats=5)
        print(t["a"].best / t["b"].best)
    """
    if rounds < 1 or repeats < 1:
        raise ValueError(f"rounds and repeats must be >= 1, got rounds={rounds}, repeats={repeats}")
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    wall_medians: dict[str, list[float]] = {name: [] for name in names}
    cpu_medians: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        order = names[shift:] + names[:shift]
        round_wall: dict[str, list[float]] = {name: [] for name in names}
        round_cpu: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(repeats):
            for name in order:
                call = variants[name]
                start, start_cpu = time.perf_counter(), time.thread_time()
                call()
                round_cpu[name].append(time.thread_time() - start_cpu)
                round_wall[name].append(time.perf_counter() - start)
        for name in names:
            wall[name].extend(round_wall[name])
            cpu[name].extend(round_cpu[name])
            wall_medians[name].append(statistics.median(round_wall[name]))
            cpu_medians[name].append(statistics.median(round_cpu[name]))
    return {
        name: Timing(tuple(wall[name]), tuple(wall_medians[name]), tuple(cpu[name]), tuple(cpu_medians[name])) for name in names
    }


def paired_speedup(baseline: Timing, candidate: Timing) -> float:
    """Median over rounds of baseline/candidate round medians: each ratio compares the same stretch of time.

    Example::

        paired_speedup(t["dense"], t["pruned"])  # 2.1 means the candidate is 2.1x faster
    """
    ratios = [base / cand for base, cand in zip(baseline.round_medians, candidate.round_medians)]
    return statistics.median(ratios)


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(count)``, restoring the previous setting.

    Example::

        with torch_threads(1):
            t = time_interleaved({...})
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def malloc_settings() -> dict[str, str]:
    """The allocator settings this process runs with (environment variables that set them).

    Example::

        malloc_settings()  # {"allocator": "glibc", "GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=..."}
    """
    preload = os.environ.get("LD_PRELOAD", "")
    allocator = next((name for name in ("jemalloc", "tcmalloc", "mimalloc") if name in preload), "glibc")
    settings = {"allocator": allocator}
    settings.update({key: os.environ[key] for key in _MALLOC_ENV if os.environ.get(key)})
    if len(settings) == 1:
        settings["note"] = "glibc defaults (dynamic mmap/trim thresholds)"
    return settings


def pin_malloc_settings(argv: list[str] | None = None) -> None:
    """Re-execute this script with pinned glibc malloc thresholds unless any are set already.

    Has no effect when ``GLIBC_TUNABLES``/``MALLOC_*`` are set (the user chose) or ``LD_PRELOAD``
    names another allocator. Must be called before heavy work: the process is replaced.

    Example::

        if __name__ == "__main__":
            pin_malloc_settings()
            main()
    """
    if any(os.environ.get(key) for key in _MALLOC_ENV):
        return
    env = dict(os.environ, GLIBC_TUNABLES=PINNED_TUNABLES)
    args = sys.argv if argv is None else argv
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *args], env)
