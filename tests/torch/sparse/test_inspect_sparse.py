"""`prunekit inspect --latency` shows dense vs sparse-runtime latency per layer and end to end for a pruned model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from prunekit.cli import main
from prunekit.torch import DigitsCNN, prune_unstructured


def test_inspect_latency_reports_the_sparse_runtime_per_layer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    weights = tmp_path / "pruned.pt"
    torch.save(prune_unstructured(DigitsCNN(), 0.9).state_dict(), weights)
    out = tmp_path / "inspect.json"
    args = ["inspect", str(weights), "--factory", "prunekit.torch:DigitsCNN", "--input-shape", "1,8,8"]
    assert main([*args, "--latency", "--batch-sizes", "1", "--repeats", "2", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "sparse runtime at batch 1" in printed and "end to end: dense" in printed
    sparse = json.loads(out.read_text())["sparse_runtime"]
    layers = {layer["name"]: layer for layer in sparse["layers"]}
    assert set(layers) == {"conv1", "conv2", "fc1", "fc2"}
    assert layers["fc1"]["sparsity"] == pytest.approx(0.9, abs=0.01)
    assert all(layer["dense_ms"] > 0 and layer["sparse_ms"] > 0 for layer in layers.values())
    assert sparse["dense_ms"] > 0 and sparse["sparse_ms"] > 0


def test_inspect_latency_of_a_dense_model_shows_no_sparse_runtime(tmp_path: Path) -> None:
    out = tmp_path / "inspect.json"
    args = ["inspect", "prunekit.torch:DigitsCNN", "--input-shape", "1,8,8", "--latency", "--batch-sizes", "1"]
    assert main([*args, "--repeats", "2", "--json", str(out)]) == 0
    assert "sparse_runtime" not in json.loads(out.read_text())
