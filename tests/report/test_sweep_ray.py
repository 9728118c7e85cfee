"""Sweeps on a real Ray: same results as processes, failed and crashed trials, resume, workers, the CLI."""

import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from prunekit.core.pool import run_jobs  # noqa: E402
from prunekit.sweep.runner import grid, read_log, run_sweep  # noqa: E402
from tests.report.sweep_objectives import TimedObjective, TorchThreadsObjective, ToyObjective, explode  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def user_ray():
    """One local Ray for the module, started as a user would: prunekit must use it and leave it running."""
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=200 << 20,
        logging_level=logging.ERROR,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
    )
    yield
    ray.shutdown()


def metrics_by_id(out):
    return {record["id"]: record["metrics"] for record in read_log(out)}


def test_ray_sweep_gives_the_trials_of_the_processes_backend(tmp_path):
    trials = grid(["m", "worse"], [0.0, 0.5, 0.9])
    processes = run_sweep(ToyObjective(tmp_path / "exec"), trials, tmp_path / "processes", workers=2)
    on_ray = run_sweep(ToyObjective(tmp_path / "exec"), trials, tmp_path / "ray", workers=2, backend="ray")
    assert metrics_by_id(tmp_path / "ray") == metrics_by_id(tmp_path / "processes")
    assert [r["id"] for r in on_ray.records] == [r["id"] for r in processes.records] == [t.id for t in trials]
    assert os.getpid() not in {r["pid"] for r in read_log(tmp_path / "ray")}
    assert ray.is_initialized()  # the user's Ray is left running


def test_failing_trial_on_ray_keeps_its_own_error_and_the_sweep_goes_on(tmp_path):
    trials = grid(["broken", "m"], [0.5])
    processes = run_sweep(ToyObjective(tmp_path / "exec"), trials, tmp_path / "processes")
    on_ray = run_sweep(ToyObjective(tmp_path / "exec"), trials, tmp_path / "ray", workers=2, backend="ray")
    assert [r["id"] for r in on_ray.failed] == ["broken@0.5"]
    assert on_ray.failed[0]["error"] == processes.failed[0]["error"] == "ValueError: metric function exploded"
    assert [r["id"] for r in on_ray.succeeded] == ["m@0.5"]


def test_trial_that_kills_its_ray_worker_fails_once_and_the_sweep_goes_on(tmp_path):
    objective = ToyObjective(tmp_path / "exec", kill_at="m@0.5")
    result = run_sweep(objective, grid(["m"], [0.2, 0.5, 0.8]), tmp_path / "out", backend="ray")
    assert [r["id"] for r in result.failed] == ["m@0.5"]
    assert result.failed[0]["error"].startswith("WorkerCrashedError: ")
    assert [r["id"] for r in result.succeeded] == ["m@0.2", "m@0.8"]
    executed = [line.split()[0] for line in (tmp_path / "exec").read_text().splitlines()]
    assert sorted(executed) == ["m@0.2", "m@0.5", "m@0.8"]  # not retried behind the sweep's back


def test_ray_sweep_resumes_without_rerunning_finished_trials(tmp_path):
    out, exec_log = tmp_path / "out", tmp_path / "exec"
    run_sweep(ToyObjective(exec_log), grid(["m"], [0.2, 0.4]), out, workers=2, backend="ray")
    result = run_sweep(ToyObjective(exec_log), grid(["m"], [0.2, 0.4, 0.6, 0.8]), out, workers=2, backend="ray")
    log = read_log(out)
    assert sorted(r["id"] for r in log) == ["m@0.2", "m@0.4", "m@0.6", "m@0.8"]
    assert log[0]["run"] == log[1]["run"] != log[2]["run"] == log[3]["run"]
    assert sorted(result.ran) == ["m@0.6", "m@0.8"]
    assert sorted(line.split()[0] for line in exec_log.read_text().splitlines()) == ["m@0.2", "m@0.4", "m@0.6", "m@0.8"]


def test_workers_bounds_the_ray_tasks_running_at_once(tmp_path):
    run_sweep(
        TimedObjective(tmp_path / "exec", seconds=0.3), grid(["m"], [0.1, 0.2, 0.3]), tmp_path / "out", workers=1, backend="ray"
    )
    spans = sorted(tuple(map(float, line.split()[1:])) for line in (tmp_path / "exec").read_text().splitlines())
    assert len(spans) == 3
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:]))


def test_ray_tasks_run_torch_on_one_thread(tmp_path):
    result = run_sweep(TorchThreadsObjective(), grid(["m"], [0.5]), tmp_path / "out", backend="ray")
    assert result.records[0]["metrics"] == {"torch_threads": 1}


def test_run_jobs_on_ray_yields_the_jobs_own_exceptions():
    outcomes = sorted(run_jobs(explode, [1, 2], workers=2, backend="ray"), key=lambda outcome: outcome[0])
    assert [(index, result, type(error), str(error)) for index, result, error in outcomes] == [
        (0, None, ValueError, "job 1 exploded"),
        (1, None, ValueError, "job 2 exploded"),
    ]


def test_unpicklable_job_on_ray_is_reported_with_pickles_error():
    [(index, _, error)] = run_jobs(explode, [threading.Lock()], workers=1, backend="ray")
    assert (index, type(error), str(error)) == (0, TypeError, "cannot pickle '_thread.lock' object")


def test_cli_sweep_on_ray_starts_and_stops_its_own_ray(tmp_path):
    script = (
        "import sys, ray; from prunekit.cli import main; code = main(sys.argv[1:]); "
        "print('ray running:', ray.is_initialized()); sys.exit(code)"
    )
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            "sweep",
            "--ray",
            "--workers",
            "2",
            "--methods",
            "m,broken",
            "--sparsities",
            "0.5",
            "--objective",
            "tests.report.sweep_objectives:quiet_toy_objective",
            "--out",
            str(tmp_path / "out"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 1, run.stderr  # one trial failed
    lines = run.stdout.splitlines()
    assert lines[0].startswith("running trials as Ray tasks, 2 at a time")
    assert sorted(lines[1:3]) == ["[failed] broken@0.5: ValueError: metric function exploded", "[ok] m@0.5: accuracy 0.7500"]
    assert any(line.strip() == "Trials" for line in lines[3:-2])  # the trials table, as in the report
    assert lines[-2].startswith("2 trial(s) run now, 0 reused from the log, 1 failed")
    assert lines[-1] == "ray running: False"
    assert "INFO" not in run.stderr and "WARNING" not in run.stderr  # Ray's start-up chatter is kept quiet
