"""Post-training quantization in ONNX Runtime: accuracy, zeros kept exactly, per-channel weights, bad calibration data."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from prunekit.artifacts.onnx_artifact import onnx_accuracy
from prunekit.artifacts.quantize import check_zeros_preserved
from prunekit.errors import ConfigError
from prunekit.torch import quantize_onnx
from tests.assertions import assert_same_outputs
from tests.torch.pruned_digits import digits, pruned_cnn, pruned_onnx, quantized_onnx

WEIGHTS = ("conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight")


def _initializers(path) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in onnx.load(str(path)).graph.initializer}


def _torch_zeros(name: str) -> np.ndarray:
    return pruned_cnn().get_parameter(name).detach().numpy() == 0


def test_static_int8_accuracy_is_within_one_point_of_fp32():
    split = digits()
    fp32 = onnx_accuracy(pruned_onnx(), split.x_test, split.y_test)
    int8 = onnx_accuracy(quantized_onnx("static"), split.x_test, split.y_test)
    assert fp32 > 0.95
    assert int8 >= fp32 - 0.01


def test_static_int8_keeps_every_zero_weight_exactly_zero():
    stored = _initializers(quantized_onnx("static"))
    for name in WEIGHTS:
        quantized, zero_point = stored[f"{name}_quantized"], stored[f"{name}_zero_point"]
        assert quantized.dtype == np.int8 and np.all(zero_point == 0), name
        assert np.all(quantized[_torch_zeros(name)] == 0), name


def test_dynamic_int8_keeps_every_zero_weight_exactly_zero():
    stored = _initializers(quantized_onnx("dynamic"))
    for name in ("fc1.weight", "fc2.weight"):  # dynamic quantizes MatMul/Gemm; ORT stores Gemm weights transposed
        quantized = stored[f"{name}_Transposed_quantized"]
        zero_point = stored[f"{name}_Transposed_zero_point"]
        assert np.all(zero_point == 0), name
        assert np.all(quantized[_torch_zeros(name).T] == 0), name


def test_static_int8_weights_have_one_scale_per_output_channel():
    stored = _initializers(quantized_onnx("static"))
    for name in WEIGHTS:
        assert stored[f"{name}_scale"].shape == (pruned_cnn().get_parameter(name).shape[0],), name


def test_quantization_reports_the_zeros_it_checked(tmp_path):
    result = quantize_onnx(pruned_onnx(), tmp_path / "m.onnx", "dynamic")
    for name in ("fc1.weight", "fc2.weight"):
        assert result.zeros_preserved[name] == int(_torch_zeros(name).sum())
    assert check_zeros_preserved(pruned_onnx(), quantized_onnx("static"))["fc1.weight"] == int(_torch_zeros("fc1.weight").sum())


def test_static_int8_file_is_under_a_third_of_fp32():
    assert os.path.getsize(quantized_onnx("static")) < os.path.getsize(pruned_onnx()) / 3


def test_fp16_keeps_zeros_and_outputs_close(tmp_path):
    result = quantize_onnx(pruned_onnx(), tmp_path / "m.fp16.onnx", "fp16")
    stored = _initializers(result.path)
    assert stored["fc1.weight"].dtype == np.float16
    assert np.array_equal(stored["fc1.weight"] == 0, _torch_zeros("fc1.weight"))
    import onnxruntime as ort

    x = digits().x_test[:32]
    sess = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        assert_same_outputs(sess.run(None, {"input": x})[0], pruned_cnn()(torch.from_numpy(x)), atol=0.05, rtol=0.01)


def test_calibration_batches_from_a_dataloader_are_accepted(tmp_path):
    from torch.utils.data import DataLoader, TensorDataset

    split = digits()
    loader = DataLoader(TensorDataset(torch.from_numpy(split.x_val), torch.from_numpy(split.y_val)), batch_size=50)
    result = quantize_onnx(pruned_onnx(), tmp_path / "m.onnx", "static", loader)
    assert onnx_accuracy(result.path, split.x_test, split.y_test) > 0.95


def test_calibration_data_of_the_wrong_shape_raises_config_error_naming_both_shapes(tmp_path):
    wrong = np.zeros((16, 8, 8), dtype=np.float32)
    with pytest.raises(ConfigError, match=r"calibration batch 0 has shape \(16, 8, 8\) .*'input' expects \(batch, 1, 8, 8\)"):
        quantize_onnx(pruned_onnx(), tmp_path / "m.onnx", "static", wrong)
    assert not (tmp_path / "m.onnx").exists()


def test_static_quantization_without_calibration_data_raises_config_error(tmp_path):
    with pytest.raises(ConfigError, match="calibration_data"):
        quantize_onnx(pruned_onnx(), tmp_path / "m.onnx", "static")


def test_unknown_mode_raises_config_error(tmp_path):
    with pytest.raises(ConfigError, match="static, dynamic, fp16"):
        quantize_onnx(pruned_onnx(), tmp_path / "m.onnx", "int4")
