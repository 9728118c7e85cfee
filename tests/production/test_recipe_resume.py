"""kill -9 ``prunekit run`` mid-way through its pruning runs, ``--resume`` it: the exported models are
bitwise those of an uninterrupted run; a checkpoint of another recipe is refused naming the file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

onnx = pytest.importorskip("onnx")
pytest.importorskip("torch")

RECIPE = {
    "name": "resume",
    "seed": 0,
    "model": {"factory": "prunekit.torch:DigitsMLP", "input_shape": [1, 8, 8]},
    "train": {"epochs": 1},
    "prune": {"method": "gradual", "sparsities": [0.5, 0.8], "epochs": 8},
    "export": {"onnx": True},
    "report": {"latency_batch_sizes": []},
}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}


def _command(recipe: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "prunekit.cli", "run", str(recipe), "--out", str(out), *extra]


def _run(recipe: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(_command(recipe, out, *extra), env=ENV, capture_output=True, text=True, timeout=600)


def _weights(path: Path) -> dict[str, np.ndarray]:
    return {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def _kill_mid_way(recipe: Path, out: Path) -> None:
    """Start the run and SIGKILL it once the second pruning run has written its first checkpoint."""
    child = subprocess.Popen(
        _command(recipe, out, "--checkpoint-every", "1"), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    target = out / ".checkpoints" / "prune-0.8.ckpt"
    deadline = time.monotonic() + 300
    while not target.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait(30)
    assert target.exists() and not (out / "results.json").exists(), "the run should have been killed mid-way"


@pytest.mark.slow
def test_a_killed_recipe_resumes_to_bitwise_identical_models(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    whole = _run(recipe, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    _kill_mid_way(recipe, tmp_path / "resumed")
    refused = _run(recipe, tmp_path / "resumed")  # without --resume the checkpoints are not thrown away
    assert refused.returncode == 2 and "pass --resume to continue it" in refused.stderr
    resumed = _run(recipe, tmp_path / "resumed", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    for name in ("pruned-0.5.onnx", "pruned-0.8.onnx"):
        expected, got = _weights(tmp_path / "whole" / name), _weights(tmp_path / "resumed" / name)
        assert expected.keys() == got.keys()
        assert all(np.array_equal(expected[k], got[k]) for k in expected), name
    runs = [json.loads((tmp_path / out / "results.json").read_text())["runs"] for out in ("whole", "resumed")]
    losses = [[[epoch["loss"] for epoch in run["history"]] for run in runs_of] for runs_of in runs]
    assert losses[0] == losses[1] and len(losses[0][1]) == 8  # the restored history of every epoch
    assert [(r["accuracy"], r["nonzeros"]) for r in runs[0]] == [(r["accuracy"], r["nonzeros"]) for r in runs[1]]
    assert not (tmp_path / "resumed" / ".checkpoints").exists()  # removed once the run is complete


@pytest.mark.slow
def test_resuming_with_another_recipe_names_the_checkpoint_and_the_mismatch(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    out = tmp_path / "out"
    _kill_mid_way(recipe, out)
    before = {p.name: p.read_bytes() for p in (out / ".checkpoints").iterdir()}
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**RECIPE, "prune": {**RECIPE["prune"], "epochs": 9}}))
    refused = _run(other, out, "--resume")
    assert refused.returncode == 2
    assert f"checkpoint {out / '.checkpoints' / 'prune-0.5.ckpt'} belongs to another run" in refused.stderr
    assert {p.name: p.read_bytes() for p in (out / ".checkpoints").iterdir()} == before  # nothing overwritten


KERAS_RECIPE = {
    "name": "resume-keras",
    "framework": "keras",
    "seed": 0,
    "model": {"factory": "prunekit.keras:digits_mlp", "kwargs": {"hidden": [32, 16]}, "input_shape": [8, 8, 1]},
    "data": {"loader": "prunekit.keras:load_digits_nhwc"},
    "train": {"epochs": 1},
    "prune": {"method": "gradual", "sparsities": [0.5, 0.8], "epochs": 4},
    "export": {"tflite": True},
    "report": {"latency_batch_sizes": []},
}


@pytest.mark.slow
def test_a_killed_keras_recipe_resumes_to_bitwise_identical_models(tmp_path):
    pytest.importorskip("keras")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(KERAS_RECIPE))
    whole = _run(recipe, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    _kill_mid_way(recipe, tmp_path / "resumed")
    resumed = _run(recipe, tmp_path / "resumed", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    for name in ("pruned-0.5.tflite", "pruned-0.8.tflite"):
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "resumed" / name).read_bytes(), name
    runs = [json.loads((tmp_path / out / "results.json").read_text())["runs"] for out in ("whole", "resumed")]
    assert [[e["loss"] for e in run["history"]] for run in runs[0]] == [[e["loss"] for e in run["history"]] for run in runs[1]]
    assert [(r["accuracy"], r["nonzeros"]) for r in runs[0]] == [(r["accuracy"], r["nonzeros"]) for r in runs[1]]


def test_resume_is_refused_for_a_keras_method_that_cannot_checkpoint(tmp_path):
    from prunekit.errors import ConfigError
    from prunekit.recipes.config import parse_recipe
    from prunekit.recipes.runner import run_recipe

    keras_model = {"factory": "prunekit.keras:digits_cnn", "input_shape": [8, 8, 1]}
    channels = {"method": "channels", "sparsities": [0.5], "epochs": 1}
    recipe = parse_recipe({**RECIPE, "framework": "keras", "model": keras_model, "prune": channels, "export": {"tflite": True}})
    with pytest.raises(ConfigError, match="--resume of a keras recipe needs a method of kind 'unstructured'"):
        run_recipe(recipe, tmp_path, resume=True)
