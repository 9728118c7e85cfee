"""Interrupted runs leave nothing behind that a later run keeps or trusts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from prunekit.core.atomic import atomic_path
from prunekit.core.debris import MANIFEST, RunOutputs, remove_stale_temps


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_temp_names_carry_the_writer_pid(tmp_path):
    with atomic_path(tmp_path / "model.onnx") as tmp:
        assert f".{os.getpid()}." in tmp.name and tmp.name.startswith(".model.")
        tmp.write_bytes(b"graph")


def test_a_killed_writer_leaves_temps_that_are_removed_and_live_ones_kept(tmp_path):
    script = textwrap.dedent(
        f"""
        import os, time
        from prunekit.core.atomic import atomic_path
        with atomic_path({str(tmp_path / "big.bin")!r}) as tmp:
            open(tmp, 'wb').write(b'partial')
            print('writing', flush=True)
            time.sleep(60)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})  # fmt: skip
    assert child.stdout.readline().strip() == "writing"
    mine = tmp_path / f".other.{os.getpid()}.abcdefgh.tmp.json"
    mine.write_text("{}")  # a live writer's temporary (this process)
    assert remove_stale_temps(tmp_path) == []  # the child is still alive
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    child.stdout.close()
    debris = [p.name for p in tmp_path.iterdir() if p.name.startswith(".big.")]
    assert len(debris) == 1
    assert [p.name for p in remove_stale_temps(tmp_path)] == debris
    assert sorted(p.name for p in tmp_path.iterdir()) == [mine.name]


def test_an_interrupted_group_swap_gets_its_old_files_back(tmp_path):
    work = tmp_path / f".model.onnx.{_dead_pid()}.k3j4h5g6.tmp"
    (work / ".replaced").mkdir(parents=True)
    (work / ".replaced" / "model.onnx").write_bytes(b"old graph")
    (work / "model.onnx").write_bytes(b"new graph, never swapped in")
    (tmp_path / "model.onnx.data").write_bytes(b"new data")  # already in place when the process died
    remove_stale_temps(tmp_path)
    assert (tmp_path / "model.onnx").read_bytes() == b"old graph"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]


def test_run_outputs_remove_only_what_the_previous_run_wrote(tmp_path):
    first = RunOutputs(tmp_path)
    first.start()
    for name in ("results.json", "pruned-0.9.onnx", "report.html"):
        (tmp_path / name).write_text("old")
    (tmp_path / "notes.txt").write_text("the user's")
    first.finish([tmp_path / "results.json", tmp_path / "pruned-0.9.onnx", tmp_path / "report.html"])
    assert json.loads((tmp_path / MANIFEST).read_text())["files"] == ["pruned-0.9.onnx", "report.html", "results.json"]
    removed = RunOutputs(tmp_path).start()
    assert sorted(p.name for p in removed) == [MANIFEST, "pruned-0.9.onnx", "report.html", "results.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_a_manifest_cannot_reach_outside_the_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "precious").write_text("keep")
    (out / MANIFEST).write_text(json.dumps({"files": ["../precious", "/etc/passwd", ".."]}))
    RunOutputs(out).start()
    assert (tmp_path / "precious").read_text() == "keep"


@pytest.mark.slow
def test_a_reused_recipe_folder_keeps_no_stale_exports(tmp_path):
    from prunekit.recipes.config import parse_recipe
    from prunekit.recipes.runner import run_recipe

    def recipe(sparsities):
        return parse_recipe({
            "name": "t", "model": {"factory": "prunekit.torch:DigitsMLP", "input_shape": [1, 8, 8]},
            "train": {"epochs": 1}, "prune": {"method": "one-shot", "sparsities": sparsities, "epochs": 1},
            "export": {"onnx": True}, "report": {"latency_batch_sizes": []},
        })  # fmt: skip

    run_recipe(recipe([0.5, 0.9]), tmp_path)
    assert any(p.name.startswith("pruned-0.9") for p in tmp_path.iterdir())
    (tmp_path / "mine.txt").write_text("x")
    run_recipe(recipe([0.5]), tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert not any(n.startswith("pruned-0.9") for n in names)
    assert "mine.txt" in names and "results.json" in names
    assert [r["target"] for r in json.loads((tmp_path / "results.json").read_text())["runs"]] == [0.5]
