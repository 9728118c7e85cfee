"""save_compressed / load_compressed on PyTorch models: exact round trips, the size targets, bad factories."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file

from prunekit.artifacts.compact import read_compact_header
from prunekit.errors import CorruptFileError, StateMismatchError
from prunekit.torch import DigitsCNN, DigitsMLP, load_compressed, save_compressed
from prunekit.torch.structured.plan import plan_of
from tests.assertions import assert_same_outputs
from tests.torch.pruned_digits import SPARSITY, accuracy, channel_pruned_cnn, dense_cnn, digits, pruned_cnn


def _dense_file_size(tmp_path) -> int:
    path = tmp_path / "dense.safetensors"
    save_file(dense_cnn().state_dict(), str(path))
    return os.path.getsize(path)


def test_fp32_round_trip_restores_every_tensor_bit_for_bit(tmp_path):
    model = pruned_cnn()
    save_compressed(model, tmp_path / "m.safetensors")
    restored = load_compressed(tmp_path / "m.safetensors", DigitsCNN)
    for name, tensor in model.state_dict().items():
        loaded = restored.state_dict()[name]
        assert loaded.dtype == tensor.dtype and loaded.shape == tensor.shape, name
        assert torch.equal(loaded, tensor), name
        # bit for bit, once -0.0 (left by masking with a multiply) is read as the zero it is
        canonical = torch.where(tensor == 0, torch.zeros_like(tensor), tensor)
        assert loaded.numpy().tobytes() == canonical.numpy().tobytes(), name


def test_fp32_file_at_90_percent_sparsity_is_at_most_0_16_of_the_dense_file(tmp_path):
    header = save_compressed(pruned_cnn(), tmp_path / "m.safetensors")
    assert header.tensors["fc1.weight"].sparsity > 0.85
    assert os.path.getsize(tmp_path / "m.safetensors") <= 0.16 * _dense_file_size(tmp_path)


def test_int8_file_at_90_percent_sparsity_is_at_most_0_06_of_the_dense_file(tmp_path):
    save_compressed(pruned_cnn(), tmp_path / "m.safetensors", dtype="int8")
    assert os.path.getsize(tmp_path / "m.safetensors") <= 0.06 * _dense_file_size(tmp_path)


def test_int8_round_trip_keeps_every_zero_and_the_accuracy_within_one_point(tmp_path):
    model = pruned_cnn()
    save_compressed(model, tmp_path / "m.safetensors", dtype="int8")
    restored = load_compressed(tmp_path / "m.safetensors", DigitsCNN).eval()
    for name, param in model.named_parameters():
        if param.ndim >= 2:
            assert torch.all(restored.get_parameter(name)[param == 0] == 0), name
    split = digits()
    assert accuracy(restored, split.x_test, split.y_test) >= accuracy(model, split.x_test, split.y_test) - 0.01


def test_fp16_round_trip_outputs_stay_close(tmp_path):
    model = pruned_cnn()
    save_compressed(model, tmp_path / "m.safetensors", dtype="fp16")
    restored = load_compressed(tmp_path / "m.safetensors", DigitsCNN).eval()
    x = torch.from_numpy(digits().x_test[:64])
    with torch.no_grad():
        assert_same_outputs(restored(x), model(x), atol=2e-2, rtol=1e-2)


def test_header_names_torch_and_the_sparsity_of_the_model(tmp_path):
    header = save_compressed(pruned_cnn(), tmp_path / "m.safetensors")
    read = read_compact_header(tmp_path / "m.safetensors")
    weights = [e for n, e in read.tensors.items() if n.endswith("weight") and len(e.shape) >= 2]
    assert read.framework == "torch"
    assert sum(e.numel - e.nnz for e in weights) == round(SPARSITY * sum(e.numel for e in weights))
    assert read.tensors == header.tensors


def test_factory_building_another_architecture_raises_state_mismatch_naming_the_tensor(tmp_path):
    save_compressed(pruned_cnn(), tmp_path / "m.safetensors")
    with pytest.raises(StateMismatchError, match=r"'conv1\.weight' has shape \[32, 1, 3, 3\] in the file but \[16, 1, 3, 3\]"):
        load_compressed(tmp_path / "m.safetensors", lambda: DigitsCNN(channels=(16, 32)))


def test_factory_with_other_tensor_names_raises_state_mismatch_listing_them(tmp_path):
    save_compressed(pruned_cnn(), tmp_path / "m.safetensors")
    with pytest.raises(StateMismatchError, match=r"'fc3\.weight', 'fc3\.bias' are not in the file"):
        load_compressed(tmp_path / "m.safetensors", DigitsMLP)


def test_mismatch_leaves_the_factory_model_untouched(tmp_path):
    save_compressed(pruned_cnn(), tmp_path / "m.safetensors")
    target = DigitsCNN(hidden=64)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(StateMismatchError, match="fc1.weight"):
        load_compressed(tmp_path / "m.safetensors", lambda: target)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_corrupted_file_raises_before_the_factory_is_called(tmp_path):
    path = tmp_path / "m.safetensors"
    save_compressed(pruned_cnn(), path)
    path.write_bytes(path.read_bytes()[:-50])
    calls = []
    with pytest.raises(CorruptFileError, match="truncated"):
        load_compressed(path, lambda: calls.append(1) or DigitsCNN())
    assert calls == []


def test_channel_pruned_model_keeps_its_plan_in_the_header(tmp_path):
    small = channel_pruned_cnn()
    header = save_compressed(small, tmp_path / "m.safetensors")
    assert read_compact_header(tmp_path / "m.safetensors").plan == plan_of(small)
    assert header.tensors["conv1.weight"].shape == tuple(small.conv1.weight.shape) != (32, 1, 3, 3)


def test_channel_pruned_model_loads_from_the_original_architecture_by_replaying_the_plan(tmp_path):
    small = channel_pruned_cnn()
    save_compressed(small, tmp_path / "m.safetensors")
    restored = load_compressed(tmp_path / "m.safetensors", DigitsCNN).eval()
    x = torch.from_numpy(digits().x_test[:16])
    with torch.no_grad():
        assert torch.equal(restored(x), small(x))


def test_channel_pruned_model_loads_into_its_own_architecture_too(tmp_path):
    small = channel_pruned_cnn()
    save_compressed(small, tmp_path / "m.safetensors", dtype="int8")
    restored = load_compressed(tmp_path / "m.safetensors", channel_pruned_cnn)
    assert restored.conv2.weight.shape == small.conv2.weight.shape


def test_explicit_plan_dict_is_stored_as_given(tmp_path):
    plan = {"note": "my own plan", "layers": [1, 2]}
    save_compressed(pruned_cnn(), tmp_path / "m.safetensors", plan=plan)
    assert read_compact_header(tmp_path / "m.safetensors").plan == plan


def test_bfloat16_tensors_round_trip_exactly(tmp_path):
    model = DigitsMLP().to(torch.bfloat16)
    save_compressed(model, tmp_path / "m.safetensors")
    restored = load_compressed(tmp_path / "m.safetensors", lambda: DigitsMLP().to(torch.bfloat16))
    for name, tensor in model.state_dict().items():
        assert restored.state_dict()[name].dtype == torch.bfloat16
        assert torch.equal(restored.state_dict()[name], tensor), name
