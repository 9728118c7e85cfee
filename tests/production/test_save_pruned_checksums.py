"""save_pruned records a CRC-32 per tensor and load_pruned checks them: corrupted weights never load silently."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from torch import nn

from prunekit.errors import CorruptFileError
from prunekit.torch.structured.plan import load_pruned, read_plan, save_pruned, verify_checksums


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def _data_offset(path) -> int:
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


def test_a_saved_file_verifies_and_loads_bit_for_bit(tmp_path):
    model = _net()
    path = save_pruned(model, tmp_path / "m.safetensors")
    assert verify_checksums(path) == 4
    loaded = load_pruned(path, _net)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


@pytest.mark.parametrize("byte", [0, 37, -1])
def test_one_flipped_weight_byte_is_a_corrupt_file_error_naming_the_tensor(tmp_path, byte):
    path = save_pruned(_net(), tmp_path / "m.safetensors")
    data = bytearray(path.read_bytes())
    position = _data_offset(path) + byte if byte >= 0 else len(data) - 1
    data[position] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match=r"m.safetensors': tensor '[\w.]+' fails its CRC-32 check"):
        load_pruned(path, _net)


def test_a_tampered_plan_fails_its_checksum(tmp_path):
    path = save_pruned(_net(), tmp_path / "m.safetensors")
    data = path.read_bytes()
    tampered = data.replace(b'\\"model\\": \\"Sequential\\"', b'\\"model\\": \\"Sequentiak\\"')
    assert tampered != data
    path.write_bytes(tampered)
    with pytest.raises(CorruptFileError, match="'prunekit_structured_plan' fails its CRC-32 check"):
        read_plan(path)


def test_the_checksums_are_in_the_metadata(tmp_path):
    path = save_pruned(_net(), tmp_path / "m.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        checksums = json.loads(handle.metadata()["prunekit_crc32"])
    assert set(checksums) == {"0.weight", "0.bias", "2.weight", "2.bias", "__plan__"}


def test_files_without_checksums_still_load(tmp_path):
    from safetensors.torch import save_model

    model, path = _net(), tmp_path / "old.safetensors"
    save_model(model, str(path), metadata={"prunekit_structured_plan": json.dumps(
        {"format": "prunekit.structured-plan", "version": 1, "model": "Sequential", "tensors": {}, "attributes": []})})  # fmt: skip
    assert verify_checksums(path) == 0
    assert torch.equal(load_pruned(path, _net)[0].weight, model[0].weight)
