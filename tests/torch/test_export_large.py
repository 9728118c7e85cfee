"""Models past protobuf's 2 GB cap: ONNX external data (model.onnx + model.onnx.data), written as an atomic pair.

The threshold is lowered to 1 MiB so a 2 MiB MLP stands in for a model over 2 GB.
"""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import prunekit.torch.deploy.export as export_module
from prunekit.core.gzip import gzip_size
from prunekit.errors import ConfigError, ExportError
from prunekit.torch import compare_artifacts, evaluate_onnx, export_onnx, quantize_onnx
from tests.assertions import assert_same_outputs

PAIR = ["mlp.onnx", "mlp.onnx.data"]
HIDDEN_ZEROS = 512 * 256  # the first 512 rows of the 1024 x 256 first-layer weight are pruned


def _mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 256)).eval()
    with torch.no_grad():
        model[0].weight[:512] = 0
    return model


def _param_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _inputs(count: int) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((count, 256)).astype(np.float32)


def _run(path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _torch(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _locations(path) -> set[str]:
    model = onnx.load(str(path), load_external_data=False)
    return {entry.value for init in model.graph.initializer for entry in init.external_data if entry.key == "location"}


@pytest.fixture
def low_threshold(monkeypatch):
    monkeypatch.setattr(export_module, "EXTERNAL_DATA_THRESHOLD", 2**20)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The seed-0 MLP exported with the threshold at 1 MiB (automatic external data)."""
    folder = tmp_path_factory.mktemp("pair")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(export_module, "EXTERNAL_DATA_THRESHOLD", 2**20)
        result = export_onnx(_mlp(0), torch.from_numpy(_inputs(2)), folder / "mlp.onnx")
    return result


def _copy_pair(exported, folder):
    for name in PAIR:
        shutil.copy(exported.path.parent / name, folder / name)
    return {name: (folder / name).read_bytes() for name in PAIR}


def test_a_model_past_the_threshold_exports_to_exactly_the_onnx_and_its_data_file(exported):
    folder = exported.path.parent
    assert _names(folder) == PAIR
    assert exported.data_path == folder / "mlp.onnx.data"
    assert _locations(exported.path) == {"mlp.onnx.data"}  # the final name, not a temporary one
    assert exported.path.stat().st_size < 16 * 1024
    assert abs(exported.data_path.stat().st_size - _param_bytes(_mlp(0))) <= 0.01 * _param_bytes(_mlp(0))


def test_onnx_runtime_reproduces_pytorch_from_the_pair(exported):
    x = _inputs(5)
    assert_same_outputs(_run(exported.path, x), _torch(_mlp(0), x), atol=1e-5, rtol=0)
    assert exported.check.max_abs_error < 1e-5


def test_evaluate_onnx_counts_both_files_and_measures_memory_from_the_path(exported):
    report = evaluate_onnx(exported.path, (_inputs(16), None), batch_sizes=(1, 4), warmup=0, repeats=2)
    files = [(exported.path.parent / name).read_bytes() for name in PAIR]
    assert report.size_bytes == sum(len(data) for data in files) > _param_bytes(_mlp(0))
    assert report.gzip_bytes == sum(gzip_size(data) for data in files)
    assert report.peak_memory_bytes is not None and report.peak_memory_bytes > 0
    assert sorted(report.latency) == [1, 4]


def test_evaluate_onnx_names_a_missing_data_file(exported, tmp_path):
    shutil.copy(exported.path, tmp_path / "mlp.onnx")
    with pytest.raises(ConfigError, match=r"\['mlp.onnx.data'\], which is missing"):
        evaluate_onnx(tmp_path / "mlp.onnx", measure_memory=False)


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_int8_of_a_pair_is_a_pair_that_keeps_zeros_and_outputs(exported, tmp_path, mode):
    _copy_pair(exported, tmp_path)
    x = _inputs(128)
    calibration = x if mode == "static" else None
    result = quantize_onnx(tmp_path / "mlp.onnx", tmp_path / "mlp.int8.onnx", mode, calibration_data=calibration)
    assert _names(tmp_path) == sorted([*PAIR, "mlp.int8.onnx", "mlp.int8.onnx.data"])
    assert result.data_path == tmp_path / "mlp.int8.onnx.data"
    assert _locations(result.path) == {"mlp.int8.onnx.data"}
    assert result.zeros_preserved["0.weight"] == HIDDEN_ZEROS
    weights = 1024 * 256 * 2  # int8: a quarter of the fp32 weight bytes
    assert weights <= result.data_path.stat().st_size < 1.1 * weights
    fp32, int8 = _run(exported.path, x), _run(result.path, x)
    assert np.abs(int8 - fp32).max() < 0.05 * np.abs(fp32).max()
    assert (int8.argmax(1) == fp32.argmax(1)).mean() >= 0.9


def test_external_data_true_writes_a_pair_below_the_threshold(tmp_path):
    result = export_onnx(_mlp(0), torch.from_numpy(_inputs(2)), tmp_path / "mlp.onnx", external_data=True)
    assert _names(tmp_path) == PAIR
    assert result.data_path == tmp_path / "mlp.onnx.data"
    assert_same_outputs(_run(result.path, _inputs(3)), _torch(_mlp(0), _inputs(3)), atol=1e-5, rtol=0)


def test_external_data_false_writes_one_file_and_drops_the_old_pairs_data(exported, tmp_path, low_threshold):
    _copy_pair(exported, tmp_path)
    result = export_onnx(_mlp(0), torch.from_numpy(_inputs(2)), tmp_path / "mlp.onnx", external_data=False)
    assert _names(tmp_path) == ["mlp.onnx"]
    assert result.data_path is None and _locations(result.path) == set()
    assert result.path.stat().st_size > _param_bytes(_mlp(0))
    assert_same_outputs(_run(result.path, _inputs(3)), _torch(_mlp(0), _inputs(3)), atol=1e-5, rtol=0)


def test_a_self_contained_file_protobuf_cannot_hold_is_refused_with_the_fix(tmp_path, monkeypatch):
    def over_2gb(*args, **kwargs):  # what onnx.save raises for a ModelProto over 2 GB
        raise ValueError("The proto size is larger than the 2 GB limit.")

    monkeypatch.setattr(onnx, "save", over_2gb)
    with pytest.raises(ExportError, match=r"mlp.onnx .*external_data=True .* mlp.onnx.data beside it"):
        export_onnx(_mlp(0), torch.from_numpy(_inputs(2)), tmp_path / "mlp.onnx", external_data=False)
    assert _names(tmp_path) == []


def test_overwriting_a_pair_replaces_both_files(exported, tmp_path, low_threshold):
    old = _copy_pair(exported, tmp_path)
    other = _mlp(1)
    export_onnx(other, torch.from_numpy(_inputs(2)), tmp_path / "mlp.onnx")
    assert _names(tmp_path) == PAIR
    assert (tmp_path / "mlp.onnx.data").read_bytes() != old["mlp.onnx.data"]
    assert_same_outputs(_run(tmp_path / "mlp.onnx", _inputs(3)), _torch(other, _inputs(3)), atol=1e-5, rtol=0)


@pytest.mark.parametrize("existing", [False, True])
def test_a_failed_verification_leaves_no_file_and_an_old_pair_intact(exported, tmp_path, monkeypatch, low_threshold, existing):
    old = _copy_pair(exported, tmp_path) if existing else {}
    seen = []

    def failing_verify(model, path, example_input, **kwargs):
        seen.append((path.name, _names(path.parent), _locations(path)))
        raise ExportError("verification failed on purpose")

    monkeypatch.setattr(export_module, "verify_onnx", failing_verify)
    with pytest.raises(ExportError, match="on purpose"):
        export_onnx(_mlp(1), torch.from_numpy(_inputs(2)), tmp_path / "mlp.onnx")
    assert seen == [("mlp.onnx", PAIR, {"mlp.onnx.data"})]  # verified under the final names, in a temp folder
    assert _names(tmp_path) == sorted(old)
    assert {name: (tmp_path / name).read_bytes() for name in old} == old


def test_compare_artifacts_writes_and_sizes_external_data_files(tmp_path, low_threshold):
    model, x = _mlp(0), _inputs(64)
    labels = _torch(model, x).argmax(1)
    comparison = compare_artifacts(
        None, model, (x, labels), x, tmp_path, batch_sizes=(1,), warmup=0, repeats=1, measure_memory=False
    )
    for name in ("pruned fp32", "pruned int8 dynamic", "pruned int8 static"):
        row = comparison.row(name)
        data = row.path.with_name(row.path.name + ".data")
        assert row.size_bytes == row.path.stat().st_size + data.stat().st_size, name
        assert row.accuracy >= (1.0 if name == "pruned fp32" else 0.9), name
