"""The compact sparse file format (framework-free core): exact round trips, sizes, layouts, bad files."""

from __future__ import annotations

import json
import os
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit import __version__
from prunekit.artifacts.compact import (
    FORMAT_VERSION,
    is_compact_file,
    load_compact,
    read_compact_header,
    save_compact,
)
from prunekit.errors import ConfigError, CorruptFileError


def _sparse(shape, sparsity, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    array = rng.standard_normal(shape).astype(dtype)
    array[rng.random(shape) < sparsity] = 0
    return array


def _assert_bitwise_equal(a: np.ndarray, b: np.ndarray, name: str) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape, f"{name}: {b.dtype}{b.shape} != {a.dtype}{a.shape}"
    assert a.tobytes() == b.tobytes(), f"{name}: bytes differ"


def _layer_state(seed=0):
    return {
        "conv.weight": _sparse((16, 8, 3, 3), 0.9, seed),
        "conv.bias": _sparse((16,), 0.0, seed + 1),
        "fc.weight": _sparse((64, 256), 0.9, seed + 2),
        "bn.num_batches_tracked": np.array(7, dtype=np.int64),
    }


def test_fp32_round_trip_is_bitwise_exact_for_every_dtype_and_odd_value(tmp_path):
    odd = _sparse((40, 50), 0.9)
    odd.reshape(-1)[[3, 7, 11, 13]] = [np.nan, np.inf, -np.inf, np.float32(1e-45)]  # NaN, infs, a subnormal
    arrays = {
        "odd": odd,
        "float64": _sparse((30, 30), 0.95, 1, np.float64),
        "float16": _sparse((30, 30), 0.5, 2, np.float16),
        "int64": np.arange(-5, 5, dtype=np.int64),
        "bool": np.array([True, False, True]),
        "scalar": np.array(3.5, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "all_zero": np.zeros((8, 8), dtype=np.float32),
    }
    save_compact(arrays, tmp_path / "m.safetensors")
    loaded, _ = load_compact(tmp_path / "m.safetensors")
    assert list(loaded) == list(arrays)
    for name, array in arrays.items():
        _assert_bitwise_equal(array, loaded[name], name)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 40),
    cols=st.integers(1, 600),
    sparsity=st.sampled_from([0.0, 0.3, 0.9, 0.99, 0.999, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_fp32_round_trip_is_exact_for_any_shape_and_sparsity(tmp_path_factory, rows, cols, sparsity, seed):
    array = _sparse((rows, cols), sparsity, seed)
    path = tmp_path_factory.mktemp("prop") / "m.safetensors"
    save_compact({"w": array}, path)
    _assert_bitwise_equal(array, load_compact(path)[0]["w"], "w")


@pytest.mark.parametrize("shape", [(1, 4), (64, 256)])
def test_negative_zero_is_stored_as_a_zero_and_loads_as_positive_zero(tmp_path, shape):
    array = -_sparse(shape, 0.9) * (np.arange(np.prod(shape)).reshape(shape) % 2)  # zeros are -0.0 and +0.0
    array.reshape(-1)[:4] = [-0.0, 1.5, 0.0, -2.0]
    header = save_compact({"w": array}, tmp_path / "m.safetensors")
    loaded = load_compact(tmp_path / "m.safetensors")[0]["w"]
    assert header.tensors["w"].nnz == int(np.count_nonzero(array))
    assert np.array_equal(loaded, array)
    assert not np.signbit(loaded[array == 0]).any()


def test_gaps_longer_than_256_elements_round_trip_through_filler_entries(tmp_path):
    array = _sparse((64, 256), 0.9)
    array.reshape(-1)[5000:6500] = 0  # one gap of over 1,500 elements
    header = save_compact({"w": array}, tmp_path / "m.safetensors", entropy="fast")  # zlib: gaps win
    assert header.tensors["w"].layout == "gaps"
    _assert_bitwise_equal(array, load_compact(tmp_path / "m.safetensors")[0]["w"], "w")


@pytest.mark.parametrize(("sparsity", "layout"), [(0.0, "dense"), (0.5, "bitmask"), (0.99, "gaps")])
def test_layout_is_whichever_is_smallest(tmp_path, sparsity, layout):
    # with zlib (entropy="fast"); "best" compares the layouts coded as stored (test_compact_cm.py)
    header = save_compact({"w": _sparse((64, 256), sparsity)}, tmp_path / "m.safetensors", entropy="fast")
    assert header.tensors["w"].layout == layout


def test_fp16_keeps_zeros_exactly_and_values_within_half_precision(tmp_path):
    array = _sparse((64, 256), 0.9)
    save_compact({"w": array}, tmp_path / "m.safetensors", dtype="fp16")
    loaded = load_compact(tmp_path / "m.safetensors")[0]["w"]
    assert loaded.dtype == np.float32
    assert np.array_equal(loaded == 0, array == 0)
    np.testing.assert_allclose(loaded, array, rtol=2**-11, atol=6e-8)


def test_int8_stores_per_channel_scales_and_keeps_zeros_exactly(tmp_path):
    array = _sparse((64, 256), 0.9)
    array[3] *= 1000.0  # one loud channel must not coarsen the others
    header = save_compact({"w": array}, tmp_path / "m.safetensors", dtype="int8")
    loaded = load_compact(tmp_path / "m.safetensors")[0]["w"]
    step = np.abs(array).max(axis=1, keepdims=True) / 127
    assert header.tensors["w"].storage == "int8"
    assert np.all(loaded[array == 0] == 0)
    assert np.all(np.abs(loaded - array) <= step / 2 + 1e-6 * step)


def test_int8_stores_vectors_in_float16_and_integer_tensors_exact(tmp_path):
    arrays = {"bias": _sparse((32,), 0.0), "count": np.array([3, 4], dtype=np.int32)}
    header = save_compact(arrays, tmp_path / "m.safetensors", dtype="int8")
    loaded = load_compact(tmp_path / "m.safetensors")[0]
    assert header.tensors["bias"].storage == "float16" and loaded["bias"].dtype == np.float32
    np.testing.assert_array_equal(loaded["bias"], arrays["bias"].astype(np.float16).astype(np.float32))
    _assert_bitwise_equal(arrays["count"], loaded["count"], "count")


def test_int8_keeps_a_vector_exact_when_float16_would_overflow_it(tmp_path):
    arrays = {"running_var": np.array([1.5, 7e4, 0.25], dtype=np.float32)}  # 7e4 is past float16's 65504
    header = save_compact(arrays, tmp_path / "m.safetensors", dtype="int8")
    assert header.tensors["running_var"].storage == "raw"
    _assert_bitwise_equal(arrays["running_var"], load_compact(tmp_path / "m.safetensors")[0]["running_var"], "running_var")


def test_header_records_versions_framework_shapes_sparsity_and_plan(tmp_path):
    plan = {"conv": {"kept_channels": [0, 2, 5]}}
    save_compact(_layer_state(), tmp_path / "m.safetensors", framework="torch", plan=plan)
    header = read_compact_header(tmp_path / "m.safetensors")
    assert header.format_version == FORMAT_VERSION
    assert header.prunekit_version == __version__
    assert header.framework == "torch"
    assert header.plan == plan
    assert header.tensors["fc.weight"].shape == (64, 256)
    assert header.tensors["fc.weight"].nnz == int(np.count_nonzero(_layer_state()["fc.weight"]))
    zeros = sum(int((a == 0).sum()) for a in _layer_state().values() if a.dtype.kind == "f")
    floats = sum(a.size for a in _layer_state().values() if a.dtype.kind == "f")
    assert header.sparsity == pytest.approx(zeros / floats)


@pytest.mark.parametrize(("dtype", "bits"), [("fp32", 32), ("int8", 8)])
def test_file_size_is_within_header_overhead_of_the_information_limit(tmp_path, dtype, bits):
    array = _sparse((256, 1024), 0.9)
    header = save_compact({"w": array}, tmp_path / "m.safetensors", dtype=dtype)
    nnz = header.tensors["w"].nnz  # int8 may round a few tiny weights to zero
    assert nnz <= np.count_nonzero(array)
    limit = nnz * bits / 8 + array.size / 8 + (256 * 4 if dtype == "int8" else 0)
    assert header.information_limit_bytes == pytest.approx(limit, abs=1)
    assert os.path.getsize(tmp_path / "m.safetensors") <= limit + 1024


@pytest.mark.parametrize("keep", [0, 5, 8, 60, -100, -1])
def test_truncated_file_raises_corrupt_file_error(tmp_path, keep):
    path = tmp_path / "m.safetensors"
    save_compact(_layer_state(), path)
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:keep])
    with pytest.raises(CorruptFileError, match="m.safetensors"):
        load_compact(path)


def test_flipped_byte_in_tensor_data_raises_corrupt_file_error_naming_the_tensor(tmp_path):
    path = tmp_path / "m.safetensors"
    save_compact({"fc.weight": _sparse((64, 256), 0.9)}, path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40  # inside the coded streams (the table follows them)
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="'fc.weight'"):
        load_compact(path)


def _rewrite_metadata(path, edit) -> None:
    data = path.read_bytes()
    header_len = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + header_len])
    meta = json.loads(header["__metadata__"]["prunekit"])
    edit(meta)
    text = json.dumps(meta)
    header["__metadata__"] = {"prunekit": text, "prunekit_crc32": str(zlib.crc32(text.encode()))}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + header_len :])


def test_newer_format_version_raises_corrupt_file_error_saying_to_upgrade(tmp_path):
    path = tmp_path / "m.safetensors"
    save_compact(_layer_state(), path)
    _rewrite_metadata(path, lambda meta: meta.update(format_version=FORMAT_VERSION + 1, prunekit_version="9.0"))
    with pytest.raises(CorruptFileError, match=rf"format version {FORMAT_VERSION + 1} .*prunekit 9\.0.*upgrade"):
        load_compact(path)


def test_edited_metadata_without_a_matching_checksum_raises_corrupt_file_error(tmp_path):
    path = tmp_path / "m.safetensors"
    save_compact(_layer_state(), path)
    data = path.read_bytes()
    path.write_bytes(data.replace(b'\\"framework\\":', b'\\"frameworK\\":', 1))
    with pytest.raises(CorruptFileError, match="CRC-32"):
        load_compact(path)


def test_plain_safetensors_file_is_not_a_compact_file(tmp_path):
    from safetensors.numpy import save_file

    save_file({"w": np.ones((2, 2), np.float32)}, tmp_path / "plain.safetensors")
    assert not is_compact_file(tmp_path / "plain.safetensors")
    with pytest.raises(CorruptFileError, match="not written by prunekit"):
        load_compact(tmp_path / "plain.safetensors")


def test_failed_save_keeps_the_previous_file_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "m.safetensors"
    save_compact(_layer_state(), path)
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="JSON"):
        save_compact(_layer_state(seed=5), path, plan={"bad": object()})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.safetensors"]


def test_int8_refuses_non_finite_weights_naming_the_tensor(tmp_path):
    array = _sparse((4, 4), 0.5)
    array[1, 1] = np.nan
    with pytest.raises(ConfigError, match="'w'.*NaN"):
        save_compact({"w": array}, tmp_path / "m.safetensors", dtype="int8")


def test_unknown_storage_dtype_raises_config_error(tmp_path):
    with pytest.raises(ConfigError, match="fp32, fp16, int8"):
        save_compact(_layer_state(), tmp_path / "m.safetensors", dtype="int4")
