"""Sweeps: grid, trial log, resume after a kill, failed trials, parallel workers, Pareto fronts, plots."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prunekit.errors import ConfigError
from prunekit.report.plots import plot_heatmap, plot_pareto
from prunekit.sweep.runner import grid, read_log, run_sweep
from prunekit.tradeoffs.pareto import pareto_front
from tests.report.sweep_objectives import ToyObjective

ROOT = Path(__file__).resolve().parents[2]


def executions(path):
    return [line.split()[0] for line in Path(path).read_text().splitlines()]


def test_grid_crosses_methods_and_sparsities_with_stable_ids():
    assert [t.id for t in grid(["a", "b"], [0.5, 0.9])] == ["a@0.5", "a@0.9", "b@0.5", "b@0.9"]


def test_grid_rejects_a_sparsity_of_one():
    with pytest.raises(ConfigError, match="sparsities"):
        grid(["a"], [1.0])


def test_sweep_writes_json_csv_and_one_log_line_per_trial(tmp_path):
    result = run_sweep(ToyObjective(tmp_path / "exec"), grid(["m"], [0.0, 0.5]), tmp_path / "out")
    assert [r["id"] for r in read_log(tmp_path / "out")] == ["m@0", "m@0.5"]
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["trials"][1]["metrics"] == {"accuracy": 0.75, "gzip_bytes": 500.0}
    csv_lines = (tmp_path / "out" / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("id,method,target,seed,status") and len(csv_lines) == 3
    assert csv_lines[2].startswith("m@0.5,m,0.5,0,ok")
    assert result.ran == ["m@0", "m@0.5"]


def test_killed_sweep_resumes_without_rerunning_finished_trials(tmp_path):
    out, exec_log = tmp_path / "out", tmp_path / "exec"
    script = (
        "from prunekit.sweep.runner import grid, run_sweep\n"
        "from tests.report.sweep_objectives import ToyObjective\n"
        f"run_sweep(ToyObjective({str(exec_log)!r}, kill_at='m@0.6'), grid(['m'], [0.2, 0.4, 0.6, 0.8]), {str(out)!r})\n"
    )
    killed = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    assert [r["id"] for r in read_log(out)] == ["m@0.2", "m@0.4"]

    result = run_sweep(ToyObjective(exec_log), grid(["m"], [0.2, 0.4, 0.6, 0.8]), out)
    log = read_log(out)
    assert [r["id"] for r in log] == ["m@0.2", "m@0.4", "m@0.6", "m@0.8"]
    assert log[0]["run"] == log[1]["run"] != log[2]["run"] == log[3]["run"]
    assert result.ran == ["m@0.6", "m@0.8"]
    assert executions(exec_log) == ["m@0.2", "m@0.4", "m@0.6", "m@0.6", "m@0.8"]  # 0.6 was cut short once


def test_failing_trial_is_recorded_as_failed_and_the_sweep_goes_on(tmp_path):
    result = run_sweep(ToyObjective(tmp_path / "exec"), grid(["broken", "m"], [0.5]), tmp_path / "out")
    failed = result.failed
    assert [r["id"] for r in failed] == ["broken@0.5"]
    assert "metric function exploded" in failed[0]["error"]
    assert [r["id"] for r in result.succeeded] == ["m@0.5"]


def test_failed_trials_are_not_rerun_unless_asked(tmp_path):
    objective, trials, out = ToyObjective(tmp_path / "exec"), grid(["broken"], [0.5]), tmp_path / "out"
    run_sweep(objective, trials, out)
    assert run_sweep(objective, trials, out).ran == []
    assert run_sweep(objective, trials, out, retry_failed=True).ran == ["broken@0.5"]


def test_two_workers_run_trials_in_worker_processes(tmp_path):
    result = run_sweep(ToyObjective(tmp_path / "exec"), grid(["m"], [0.1, 0.2, 0.3, 0.4]), tmp_path / "out", workers=2)
    assert sorted(result.ran) == ["m@0.1", "m@0.2", "m@0.3", "m@0.4"]
    pids = {r["pid"] for r in read_log(tmp_path / "out")}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    assert [r["id"] for r in result.records] == ["m@0.1", "m@0.2", "m@0.3", "m@0.4"]  # grid order


def test_pareto_front_keeps_only_undominated_points_sorted_by_cost():
    rows = [
        {"accuracy": 0.9, "size": 10},
        {"accuracy": 0.8, "size": 20},
        {"accuracy": 0.95, "size": 30},
        {"accuracy": 0.5, "size": 5},
        {"status": "failed"},
    ]
    assert pareto_front(rows, "accuracy", "size") == [3, 0, 2]


def test_sweep_fronts_name_trial_ids(tmp_path):
    result = run_sweep(ToyObjective(tmp_path / "exec"), grid(["m", "worse"], [0.0, 0.5]), tmp_path / "out")
    assert result.fronts()["gzip_bytes"] == ["m@0.5", "m@0"]


def test_pareto_plot_writes_png_and_svg(tmp_path):
    rows = [{"method": "a", "accuracy": 0.9, "gzip_bytes": 10}, {"method": "b", "accuracy": 0.8, "gzip_bytes": 5}]
    figure = plot_pareto(rows, "gzip_bytes", front=[1, 0], stem=tmp_path / "pareto")
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (tmp_path / "pareto.svg").read_bytes()
    assert figure.png == (tmp_path / "pareto.png").read_bytes()


def test_heatmap_rejects_an_empty_table():
    with pytest.raises(ConfigError, match="heat-map"):
        plot_heatmap([], [0.5], [])


def test_ray_backend_without_ray_names_the_extra(tmp_path, monkeypatch):
    from prunekit.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees where the extra is not installed
    with pytest.raises(MissingDependencyError, match=r"prunekit\[ray\]"):
        run_sweep(ToyObjective(tmp_path / "exec"), grid(["m"], [0.5]), tmp_path / "out", backend="ray")


def test_unknown_backend_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="backend"):
        run_sweep(ToyObjective(tmp_path / "exec"), grid(["m"], [0.5]), tmp_path / "out", backend="dask")
