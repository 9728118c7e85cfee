"""Picklable objectives for the sweep tests: instant, logging each execution, failing or dying on cue."""

import os
import signal
import time


class ToyObjective:
    """accuracy = 1 - sparsity^2 (minus 0.1 for method 'worse'), size = 1000 * (1 - sparsity).

    Appends ``trial-id pid`` to ``exec_log`` on every execution; method ``broken`` raises; the
    trial ``kill_at`` SIGKILLs its own process (a sweep killed midway).
    """

    def __init__(self, exec_log, kill_at=None):
        self.exec_log = str(exec_log)
        self.kill_at = kill_at

    def __call__(self, trial):
        with open(self.exec_log, "a") as handle:
            handle.write(f"{trial.id} {os.getpid()}\n")
        if trial.id == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if trial.method == "broken":
            raise ValueError("metric function exploded")
        penalty = 0.1 if trial.method == "worse" else 0.0
        return {"accuracy": 1 - trial.sparsity**2 - penalty, "gzip_bytes": 1000 * (1 - trial.sparsity)}


class TimedObjective:
    """Sleeps ``seconds`` per trial and appends ``trial-id start end`` (wall-clock) to ``exec_log``."""

    def __init__(self, exec_log, seconds=0.3):
        self.exec_log = str(exec_log)
        self.seconds = seconds

    def __call__(self, trial):
        started = time.time()
        time.sleep(self.seconds)
        with open(self.exec_log, "a") as handle:
            handle.write(f"{trial.id} {started} {time.time()}\n")
        return {"accuracy": 1 - trial.sparsity}


class TorchThreadsObjective:
    """Reports the intra-op thread count torch runs the trial with, importing torch where it runs."""

    def __call__(self, trial):
        import torch

        return {"torch_threads": torch.get_num_threads()}


def explode(job):
    """A job function for ``run_jobs`` that raises, naming the job."""
    raise ValueError(f"job {job} exploded")


def quiet_toy_objective():
    """A zero-argument factory for ``prunekit sweep --objective``: a :class:`ToyObjective` logging nowhere."""
    return ToyObjective(os.devnull)
