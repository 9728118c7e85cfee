"""Crafted version 2 compact files: bounded inflation, and every malformed field a CorruptFileError naming file and field
(version 3 files: test_compact_v3.py)."""

from __future__ import annotations

import json
import resource
import zlib

import numpy as np
import pytest
from safetensors.numpy import load as load_st
from safetensors.numpy import save as save_st

from prunekit.artifacts.compact import load_compact
from prunekit.errors import CorruptFileError
from tests.production.compact_v2 import write_v2


def _metadata(path) -> dict:
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + size])["__metadata__"]


def _rewrite(path, mutate, parts=None) -> None:
    """Rewrite a compact file with its metadata changed by ``mutate`` (and a valid metadata CRC)."""
    stored = parts if parts is not None else load_st(path.read_bytes())
    meta = json.loads(_metadata(path)["prunekit"])
    mutate(meta)
    text = json.dumps(meta)
    path.write_bytes(save_st(stored, metadata={"prunekit": text, "prunekit_crc32": str(zlib.crc32(text.encode()))}))


def _sparse_file(tmp_path):
    weights = np.zeros((64, 64), np.float32)
    weights[::9, ::7] = 1.5
    path = tmp_path / "m.safetensors"
    meta = write_v2(path, {"fc.weight": weights, "fc.bias": np.ones(64, np.float32)})
    assert meta["tensors"]["fc.weight"]["layout"] != "dense"
    return path, weights


def test_an_index_that_inflates_past_its_shape_is_refused_before_it_balloons(tmp_path):
    path, _ = _sparse_file(tmp_path)
    bomb = np.frombuffer(zlib.compress(bytes(200 * 2**20), 9), np.uint8)  # 200 MiB of zeros in ~200 KB
    values = np.ones(1, np.float32)

    def crafted(meta):
        crc = zlib.crc32(bomb.tobytes(), zlib.crc32(values.tobytes()))  # parts in order: values, index
        meta["tensors"] = {"w": {"shape": [4, 4], "dtype": "float32", "nnz": 1, "crc": crc, "layout": "gaps", "z": 1}}

    _rewrite(path, crafted, {"w:values": values, "w:index": bomb})
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(
        CorruptFileError, match=r"tensor 'w' .*inflates past the 1 bytes that shape \(4, 4\) with 1 nonzeros allows"
    ):
        load_compact(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024  # KiB: far below the 200 MiB


def test_a_file_declaring_huge_tensors_is_refused_before_decoding(tmp_path):
    path, _ = _sparse_file(tmp_path)
    _rewrite(path, lambda meta: meta["tensors"]["fc.weight"].update(shape=[2**20, 2**20]))
    with pytest.raises(CorruptFileError, match=r"m.safetensors declares [\d,]+ bytes of tensors, over the"):
        load_compact(path)


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda m: m["tensors"]["fc.weight"].update(shape=[-64, -64]), "'shape'"),
        (lambda m: m["tensors"]["fc.weight"].update(shape=[64, 2**50]), "'shape'"),
        (lambda m: m["tensors"]["fc.weight"].pop("nnz"), "'nnz' is missing"),
        (lambda m: m["tensors"]["fc.weight"].update(nnz=10**9), "'nnz'"),
        (lambda m: m["tensors"]["fc.weight"].update(dtype="no-such-dtype"), "'dtype'"),
        (lambda m: m["tensors"]["fc.weight"].update(layout="zigzag"), "'layout'"),
        (lambda m: m["tensors"]["fc.weight"].update(crc="abc"), "'crc'"),
        (lambda m: m.pop("framework"), "lacks the field 'framework'"),
        (lambda m: m.update(tensors=[1, 2]), "'tensors' should be a mapping"),
        (lambda m: m.update(format_version="2"), "invalid format_version"),
        (lambda m: m.update(plan=[1]), "'plan' should be a mapping"),
    ],
)
def test_malformed_metadata_is_a_corrupt_file_error_naming_file_and_field(tmp_path, mutate, field):
    path, _ = _sparse_file(tmp_path)
    _rewrite(path, mutate)
    with pytest.raises(CorruptFileError) as caught:
        load_compact(path)
    assert str(path) in str(caught.value) and field in str(caught.value)


def test_a_well_formed_file_still_round_trips(tmp_path):
    path, weights = _sparse_file(tmp_path)
    arrays, _ = load_compact(path)
    assert np.array_equal(arrays["fc.weight"], weights)


def test_out_of_range_keep_indices_in_a_compact_plan_name_the_file(tmp_path):
    import torch

    from prunekit.torch.deploy.compact import load_compressed, save_compressed
    from prunekit.torch.models import DigitsMLP

    torch.manual_seed(0)
    path = tmp_path / "p.safetensors"
    save_compressed(DigitsMLP(), path)
    first = next(iter(DigitsMLP().state_dict().items()))
    plan = {"format": "prunekit.structured-plan", "version": 1, "model": "DigitsMLP", "attributes": [],
            "tensors": {first[0]: {"shape": list(first[1].shape), "keep": {"0": [0, 10**6]}}}}  # fmt: skip
    _rewrite(path, lambda meta: meta.update(plan=plan))
    with pytest.raises(CorruptFileError, match=r"p.safetensors.*keep\.0' should list positions"):
        load_compressed(path, DigitsMLP)
