"""The Keras examples run as written (with fewer epochs) and do what they say."""

import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _example(name):
    return runpy.run_path(str(ROOT / "examples" / f"{name}.py"), run_name="example")["main"]


def test_mlp_neuron_pruning_halves_the_hidden_layers_and_recovers_accuracy():
    results = _example("keras_mlp_neuron_pruning")(epochs=15, finetune_epochs=5)
    dense, _, finetuned = results["accuracy"]
    assert results["units"] == [64, 32, 10]
    assert results["params"] == (17226, 6570)
    assert finetuned >= dense - 0.02


def test_custom_gradient_tape_loop_reaches_80_percent_and_keeps_accuracy():
    results = _example("keras_custom_loop")(epochs=5)
    sizes = {"conv1/kernel": 288, "conv2/kernel": 18432, "fc1/kernel": 131072, "fc2/kernel": 1280}
    assert results["kernel_sparsity"] == {path: pytest.approx(round(0.8 * n) / n) for path, n in sizes.items()}
    assert results["accuracy"] >= 0.94


def test_tfmot_port_prunes_to_80_percent_and_shrinks_the_gzipped_tflite(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    results = _example("keras_tfmot_port")(epochs=8, prune_epochs=3)
    logs = Path(capsys.readouterr().out.split("pruning summaries: ")[1].strip())
    assert list(tmp_path.iterdir()) == []  # nothing written where it was run: the logs went to a temporary folder
    assert results["sparsity"] == pytest.approx(0.8, abs=1e-5)
    assert results["pruned_accuracy"] >= results["baseline_accuracy"] - 0.02
    assert results["pruned_gzip_bytes"] < 0.35 * results["dense_gzip_bytes"]
    assert results["int8"]["accuracy"] >= results["pruned_accuracy"] - 0.01
    assert (logs / "pruning_summaries.jsonl").exists()
