"""ONNX export: ORT reproduces PyTorch, the batch dimension is dynamic, failures are precise and leave no file."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from prunekit.errors import ExportError
from prunekit.torch import DigitsCNN, export_onnx, verify_onnx
from tests.assertions import assert_same_outputs
from tests.torch.pruned_digits import channel_pruned_cnn, digits, pruned_cnn, pruned_export, pruned_onnx


def _ort_outputs(path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_onnx_outputs_match_pytorch_on_the_pruned_cnn():
    model, x = pruned_cnn(), digits().x_test[:64]
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert_same_outputs(_ort_outputs(pruned_onnx(), x), expected, atol=1e-4, rtol=1e-4)


def test_export_reports_the_max_abs_error_at_two_batch_sizes():
    result = pruned_export()  # exported from a batch-1 example
    assert result.check is not None
    assert result.check.batch_sizes == (1, 2)
    assert 0 <= result.check.max_abs_error < 1e-4
    assert "max abs error" in str(result.check)
    assert result.input_names == ("input",) and result.output_names == ("output",)


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_exported_file_runs_at_any_batch_size(batch):
    out = _ort_outputs(pruned_onnx(), digits().x_test[:batch])
    assert out.shape == (batch, 10)


def test_export_keeps_every_zero_weight():
    graph = onnx.load(str(pruned_onnx())).graph
    weights = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    model = pruned_cnn()
    for name in ("conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"):
        # conv weights carry the folded BatchNorm scale: nonzeros change, zeros stay zeros
        assert np.array_equal(weights[name] == 0, model.get_parameter(name).detach().numpy() == 0), name


def test_channel_pruned_model_exports_with_its_smaller_layers_and_matches(tmp_path):
    small = channel_pruned_cnn()
    result = export_onnx(small, torch.from_numpy(digits().x_val[:4]), tmp_path / "small.onnx")
    assert result.check.max_abs_error < 1e-4
    weights = {init.name: init.dims for init in onnx.load(str(result.path)).graph.initializer}
    assert tuple(weights["conv1.weight"]) == tuple(small.conv1.weight.shape) != (32, 1, 3, 3)


def test_export_leaves_the_model_in_training_mode_when_it_was(tmp_path):
    model = DigitsCNN().train()
    export_onnx(model, torch.zeros(2, 1, 8, 8), tmp_path / "m.onnx")
    assert model.training and model.bn1.training


class _Eigen(nn.Module):
    def forward(self, x):
        return torch.linalg.eigh(x @ x.transpose(-1, -2))[0]


def test_op_without_onnx_translation_raises_export_error_naming_the_op(tmp_path):
    with pytest.raises(ExportError, match="aten._linalg_eigh"):
        export_onnx(_Eigen(), torch.randn(2, 4, 4), tmp_path / "m.onnx")
    assert os.listdir(tmp_path) == []


class _FixedBatch(nn.Module):
    def forward(self, x):
        return x.view(3, -1) * 2


def test_forward_that_fixes_the_batch_size_raises_export_error_and_writes_nothing(tmp_path):
    with pytest.raises(ExportError, match="fixes the batch size"):
        export_onnx(_FixedBatch(), torch.randn(3, 4), tmp_path / "m.onnx")
    assert os.listdir(tmp_path) == []


def test_verify_raises_export_error_naming_the_output_when_models_disagree():
    other = DigitsCNN().eval()
    with pytest.raises(ExportError, match="output 'output' .* differs from PyTorch by up to"):
        verify_onnx(other, pruned_onnx(), torch.from_numpy(digits().x_val[:4]))
