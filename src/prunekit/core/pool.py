"""Run independent jobs in worker processes (or in this process for one worker), results as they finish.

On Linux workers fork from a ``forkserver`` that has imported torch once (fast to start, and
safe: the server never ran torch's thread pools, unlike a plain ``fork`` of this process);
elsewhere they are ``spawn``ed. Each runs torch with one intra-op thread, so ``workers``
processes use ``workers`` cores. With ``backend="ray"`` the jobs are Ray tasks of one CPU
each (Ray sets ``OMP_NUM_THREADS=1`` in them, so torch also uses one thread).
"""

from __future__ import annotations

import ast
import logging
import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

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


def _guarded(tree: ast.Module, line: int) -> bool:
    """Whether ``line`` lies inside an ``if __name__ == "__main__":`` block of the module ``tree``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "__name__" in ast.unparse(node.test) and "__main__" in ast.unparse(node.test):
            if node.lineno <= line <= (node.end_lineno or node.lineno):
                return True
    return False


def check_main_guard(workers: int) -> None:
    """Refuse to start worker processes from the top level of an unguarded script, saying what to add.

    Worker processes import the script that started them (``__main__``) before running a job; a
    script whose pool-starting call is not under ``if __name__ == "__main__":`` would start pools
    from inside the workers, which Python forbids (the pool breaks with ``BrokenProcessPool``). A
    script run under ``python -c``, a notebook or the REPL has no file to re-import and passes.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or path is None or getattr(main, "__spec__", None) is not None or not os.path.isfile(path):
        return  # no script file, or run with ``python -m`` (the module is imported under its own name)
    frame = sys._getframe(1)
    while frame is not None and not (frame.f_globals is vars(main) and frame.f_code.co_name == "<module>"):
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None:
        return  # called from a function: the call happens only when the script calls it
    try:
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read())
    except (OSError, SyntaxError, UnicodeDecodeError):
        return
    if not _guarded(tree, frame.f_lineno):
        raise ConfigError(
            f"workers={workers} starts worker processes, which import your script {path} again; put the script's code under "
            f'`if __name__ == "__main__":` (line {frame.f_lineno} is at its top level), or use workers=1'
        )


BACKENDS = ("processes", "ray")
_RAY_OBJECT_STORE_BYTES = 1 << 30  # jobs carry an objective and a trial: ample, and small next to a laptop's RAM


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        from prunekit.errors import MissingDependencyError

        raise MissingDependencyError("backend='ray' needs Ray: pip install 'prunekit[ray]'") from None
    return ray


def _connect_ray(ray: Any, workers: int) -> bool:
    """Use the Ray this process is connected to, else connect: True when this call did (and must shut down).

    With ``RAY_ADDRESS`` set, it connects to that cluster as it is. Otherwise it starts a local
    instance of its own (not one left running by ``ray start``): ``min(workers, cores)`` CPUs, no
    dashboard, a 1 GiB object store, Ray's logs at ERROR, and the workers importing from this
    process's ``sys.path``, so objectives importable here are importable there.
    """
    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(logging_level=logging.ERROR, log_to_driver=False)
        return True
    python_path = os.pathsep.join(dict.fromkeys(os.path.abspath(entry or os.curdir) for entry in sys.path))
    ray.init(
        address="local",
        num_cpus=min(workers, os.cpu_count() or 1),
        include_dashboard=False,
        object_store_memory=_RAY_OBJECT_STORE_BYTES,
        logging_level=logging.ERROR,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": python_path}},
    )
    return True


def _job_error(ray: Any, error: BaseException) -> BaseException:
    """The job's own exception, as the processes backend reports it, not Ray's wrapper around it."""
    if isinstance(error, ray.exceptions.RayTaskError) and isinstance(error.cause, BaseException):
        return error.cause
    return error


def _run_on_ray(fn: Callable[[Any], Any], jobs: Sequence[Any], workers: int) -> Iterator[tuple[int, Any, BaseException | None]]:
    ray = _import_ray()
    started = _connect_ray(ray, workers)
    # max_retries=0: a job that kills its worker is reported failed once, like a broken process pool
    remote = ray.remote(num_cpus=1, max_retries=0)(fn)
    waiting = deque(enumerate(jobs))
    pending: dict[Any, int] = {}
    try:
        while waiting or pending:
            while waiting and len(pending) < workers:
                index, job = waiting.popleft()
                try:
                    pending[remote.remote(job)] = index
                except TypeError as exc:  # Ray could not pickle the job; its cause is pickle's own error
                    yield index, None, exc.__cause__ or exc
            if not pending:
                continue
            done, _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(done[0])
            try:
                yield index, ray.get(done[0]), None
            except Exception as exc:
                yield index, None, _job_error(ray, exc)
    finally:
        for ref in pending:  # the caller stopped early: do not leave its tasks running
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()


def run_jobs(
    fn: Callable[[Any], Any], jobs: Sequence[Any], workers: int = 1, backend: str = "processes"
) -> Iterator[tuple[int, Any, BaseException | None]]:
    """Yield ``(index, result, error)`` for every job as it finishes; ``error`` is the job's exception or None.

    With ``workers=1`` jobs run here, in order; otherwise ``fn`` and the jobs must be picklable
    (a module-level function, plain data). A job that raises does not stop the others.
    ``backend="ray"`` runs the jobs as Ray tasks, one CPU and at most ``workers`` at a time, for
    sweeps that outgrow one machine: on the Ray this process already joined (``ray.init(...)``,
    left running), else the cluster ``RAY_ADDRESS`` names (disconnected after), else a local
    instance started for this call (stopped after). A job's error is its own exception, not
    Ray's wrapper.

    Example::

        for index, result, error in run_jobs(train_one, specs, workers=2):
            ...
    """
    workers = check_workers(workers)
    if backend not in BACKENDS:
        raise ConfigError(f"backend should be one of {BACKENDS}, got {backend!r}")
    if backend == "ray":
        yield from _run_on_ray(fn, jobs, workers)
        return
    if workers == 1 or len(jobs) <= 1:
        for index, job in enumerate(jobs):
            try:
                yield index, fn(job), None
            except Exception as exc:  # the caller records it with the job's id
                yield index, None, exc
        return
    check_main_guard(workers)
    context = _context()
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context, initializer=_one_thread_per_worker) as pool:
        pending: dict[Future[Any], int] = {pool.submit(fn, job): index for index, job in enumerate(jobs)}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                index = pending.pop(future)
                error = future.exception()
                yield index, None if error else future.result(), error
