"""ONNX export: the dynamo exporter where it can, the legacy TorchScript exporter as a warned fallback, both verified."""

import warnings

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from prunekit.artifacts.ort import session
from prunekit.errors import ExportError, ExportFallbackWarning
from prunekit.torch.deploy.export import export_onnx


class DataDependent(nn.Module):
    """A Python branch on a tensor's value: torch.export cannot trace it, TorchScript tracing records one path."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        if float(x.abs().mean()) > 1000.0:  # never true for the inputs used here
            return self.fc(x) * 0
        return self.fc(x)


class Unexportable(nn.Module):
    def forward(self, x):
        return torch.linalg.eigvals(x).real  # complex eigenvalues: neither exporter translates them


def test_a_model_torch_export_takes_uses_the_dynamo_exporter_without_warning(tmp_path):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExportFallbackWarning)
        result = export_onnx(model, torch.randn(2, 4), tmp_path / "m.onnx")
    assert result.check.max_abs_error < 1e-5
    nodes = [node.name for node in onnx.load(str(tmp_path / "m.onnx")).graph.node]
    assert nodes and not any(name.startswith("/") for name in nodes)  # TorchScript names nodes by scope: "/0/Gemm"


def test_a_data_dependent_model_falls_back_to_the_legacy_exporter_with_a_warning(tmp_path):
    torch.manual_seed(0)
    model = DataDependent()
    x = torch.randn(2, 4)
    with pytest.warns(ExportFallbackWarning, match="legacy TorchScript exporter"):
        result = export_onnx(model, x, tmp_path / "m.onnx")
    assert [node.name for node in onnx.load(str(tmp_path / "m.onnx")).graph.node] == ["/fc/Gemm"]  # TorchScript's naming
    assert result.check.max_abs_error < 1e-5  # verified in ONNX Runtime at batch 2 and 3
    five = torch.randn(5, 4)
    (ort,) = session(tmp_path / "m.onnx").run(None, {result.input_names[0]: five.numpy()})
    np.testing.assert_allclose(ort, model(five).detach().numpy(), atol=1e-5)  # the batch stays dynamic


def test_when_both_exporters_fail_the_dynamo_error_is_raised(tmp_path):
    with pytest.raises(ExportError):
        export_onnx(Unexportable(), torch.randn(2, 3, 3), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
