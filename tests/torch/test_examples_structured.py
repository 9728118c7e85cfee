"""The structured-pruning examples run and report the numbers their docstrings promise."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from tests.torch.structured_helpers import one_torch_thread  # noqa: F401  (autouse: one torch thread per test)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load_main(name: str):
    return runpy.run_path(str(EXAMPLES / name), run_name="example")["main"]


@pytest.mark.slow
def test_mlp_example_halves_the_hidden_neurons_and_recovers_accuracy():
    numbers = load_main("structured_mlp.py")(epochs=10, finetune_epochs=4, verbose=False)
    assert numbers["hidden_before"] == (128, 64) and numbers["hidden_after"] == (64, 32)
    assert numbers["params_after"] == (64 * 64 + 64) + (64 * 32 + 32) + (32 * 10 + 10)
    assert numbers["dense_accuracy"] > 0.9
    assert numbers["finetuned_accuracy"] >= numbers["dense_accuracy"] - 0.03


@pytest.mark.slow
def test_cnn_example_halves_conv1_filters_and_fc1_inputs(tmp_path):
    numbers = load_main("structured_cnn.py")(
        epochs=5, finetune_epochs=2, save_to=str(tmp_path / "cnn.safetensors"), verbose=False
    )
    assert (numbers["filters_before"], numbers["filters_after"], numbers["fc1_inputs_after"]) == (64, 32, 512)
    assert len(numbers["removed_filters"]) == 32
    assert numbers["macs_ratio"] == pytest.approx(2.0)
    assert numbers["finetuned_accuracy"] >= numbers["dense_accuracy"] - 0.03
    assert numbers["reloaded_accuracy"] == numbers["finetuned_accuracy"]
