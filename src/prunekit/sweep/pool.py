"""Run independent jobs in worker processes (or in this process for one worker), results as they finish.

On Linux workers fork from a ``forkserver`` that has imported torch once (fast to start, and
safe: the server never ran torch's thread pools, unlike a plain ``fork`` of this process);
elsewhere they are ``spawn``ed. Each runs torch with one intra-op thread, so ``workers``
processes use ``workers`` cores.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, Callable, Iterator, Sequence

from prunekit.errors import ConfigError


def _one_thread_per_worker() -> None:
    # torch reads these when it is first imported in the worker (not yet, at this point), so a
    # worker that never needs torch does not pay for importing it.
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def _context() -> multiprocessing.context.BaseContext:
    if sys.platform.startswith("linux"):
        context = multiprocessing.get_context("forkserver")
        # torch._dynamo is imported lazily by the first optimizer step: seconds per worker otherwise
        context.set_forkserver_preload(["torch", "torch.optim", "torch._dynamo", "prunekit.sweep.runner"])
        return context
    return multiprocessing.get_context("spawn")


def check_workers(workers: Any) -> int:
    """``workers`` as a positive int, or a :class:`ConfigError` saying what to pass."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers should be an integer >= 1 (processes), got {workers!r}")
    return workers


BACKENDS = ("processes", "ray")


def _run_on_ray(fn: Callable[[Any], Any], jobs: Sequence[Any]) -> Iterator[tuple[int, Any, BaseException | None]]:
    try:
        import ray
    except ImportError:
        from prunekit.errors import MissingDependencyError

        raise MissingDependencyError("backend='ray' needs Ray: pip install 'prunekit[ray]'") from None
    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
    remote = ray.remote(num_cpus=1)(fn)
    pending = {remote.remote(job): index for index, job in enumerate(jobs)}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            index = pending.pop(ref)
            try:
                yield index, ray.get(ref), None
            except Exception as exc:  # a RayTaskError wrapping the job's exception
                yield index, None, exc


def run_jobs(fn: Callable[[Any], Any], jobs: Sequence[Any], workers: int = 1,
             backend: str = "processes") -> Iterator[tuple[int, Any, BaseException | None]]:
    """Yield ``(index, result, error)`` for every job as it finishes; ``error`` is the job's exception or None.

    With ``workers=1`` jobs run here, in order; otherwise ``fn`` and the jobs must be picklable
    (a module-level function, plain data). A job that raises does not stop the others.
    ``backend="ray"`` runs the jobs as Ray tasks on the cluster ``ray.init()`` connects to (one
    CPU each; ``workers`` is then Ray's business), for sweeps that outgrow one machine.

    Example::

        for index, result, error in run_jobs(train_one, specs, workers=2):
            ...
    """
    workers = check_workers(workers)
    if backend not in BACKENDS:
        raise ConfigError(f"backend should be one of {BACKENDS}, got {backend!r}")
    if backend == "ray":
        yield from _run_on_ray(fn, jobs)
        return
    if workers == 1 or len(jobs) <= 1:
        for index, job in enumerate(jobs):
            try:
                yield index, fn(job), None
            except Exception as exc:  # the caller records it with the job's id
                yield index, None, exc
        return
    context = _context()
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context,
                             initializer=_one_thread_per_worker) as pool:
        pending: dict[Future, int] = {pool.submit(fn, job): index for index, job in enumerate(jobs)}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                index = pending.pop(future)
                error = future.exception()
                yield index, None if error else future.result(), error
