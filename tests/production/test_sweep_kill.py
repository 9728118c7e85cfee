"""kill -9 a sweep mid-way and run it again: it finishes the missing trials only, with the same results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

OBJECTIVE = """
import time

class Slow:
    def fingerprint(self):
        return {"objective": "Slow", "version": 1}

    def __call__(self, trial):
        time.sleep(0.4)
        return {"accuracy": round(1 - trial.sparsity ** 2, 6), "gzip_bytes": 1000 * (1 - trial.sparsity)}
"""


def _sweep(module_dir, out, sparsities):
    sys.path.insert(0, str(module_dir))
    try:
        from slow_objective import Slow

        from prunekit.sweep.runner import grid, run_sweep

        return run_sweep(Slow(), grid(["one-shot"], sparsities), out)
    finally:
        sys.path.remove(str(module_dir))


def _metrics(result):
    return [(r["id"], r["key"], r["metrics"]) for r in result.records]


def test_a_killed_sweep_resumes_with_the_finished_trials_kept(tmp_path):
    (tmp_path / "slow_objective.py").write_text(OBJECTIVE)
    sparsities = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    out = tmp_path / "killed"
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from slow_objective import Slow
        from prunekit.sweep.runner import grid, run_sweep
        run_sweep(Slow(), grid(["one-shot"], {sparsities!r}), {str(out)!r})
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, "-c", script], env=env)
    log = out / "trials.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    finished = [json.loads(line)["id"] for line in log.read_text().splitlines() if line.strip()]
    assert 3 <= len(finished) < len(sparsities)
    (out / f".results.{child.pid}.abcdefgh.tmp.json").write_text("{")  # as if killed while writing results
    resumed = _sweep(tmp_path, out, sparsities)
    assert resumed.ran == [f"one-shot@{s:g}" for s in sparsities if f"one-shot@{s:g}" not in finished]
    uninterrupted = _sweep(tmp_path, tmp_path / "whole", sparsities)
    assert _metrics(resumed) == _metrics(uninterrupted)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert json.loads((out / "results.json").read_text())["trials"] == resumed.records
