"""``prunekit export`` writes a reference profile beside every ONNX artifact, made on the test data."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from prunekit.artifacts.profile import ReferenceProfile
from prunekit.cli import main
from prunekit.data import load_digits
from tests.torch.pruned_digits import pruned_cnn


@pytest.mark.slow
def test_export_writes_a_profile_beside_each_onnx_file(tmp_path):
    torch.save(pruned_cnn().state_dict(), tmp_path / "pruned.pt")
    out = tmp_path / "out"
    args = ["export", str(tmp_path / "pruned.pt"), "--factory", "prunekit.torch:DigitsCNN", "--out", str(out)]
    assert main([*args, "--json", str(tmp_path / "table.json"), "--repeats", "1", "--no-memory"]) == 0
    rows = {row["name"]: row for row in json.loads((tmp_path / "table.json").read_text())["rows"]}
    split = load_digits()
    for name, row in (("pruned.onnx", "pruned fp32"), ("pruned.int8-static.onnx", "pruned int8 static")):
        profile = ReferenceProfile.load(out / f"{name}.profile.json")
        (graph_input,) = onnx.load(str(out / name)).graph.input
        (tensor,) = profile.inputs
        assert tensor.name == graph_input.name and tensor.sample_shape == (1, 8, 8) and len(tensor.features) == 64
        assert profile.samples == len(split.x_test) and profile.source == name
        assert profile.accuracy == pytest.approx(rows[row]["accuracy"])
        pixel = split.x_test[:, 0, 3, 4].astype(np.float64)
        assert tensor.features[3 * 8 + 4].mean == pytest.approx(pixel.mean())
        (output,) = profile.outputs
        assert output.kind == "classes" and sum(output.class_counts) == len(split.x_test)
    assert not (out / "dense.onnx.profile.json").exists()  # no --dense, no dense artifact
