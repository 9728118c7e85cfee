"""Compact files of format versions 1 and 2 (a safetensors tensor per part) still read, and crafted ones are refused."""

from __future__ import annotations

import json
import lzma
import resource
import zlib

import numpy as np
import pytest
from safetensors.numpy import load as load_st

from prunekit.artifacts.compact import load_compact, load_compact_sparse
from prunekit.artifacts.compact_codecs import lzma_filters
from prunekit.errors import CorruptFileError
from tests.production.compact_v2 import crc as _crc
from tests.production.compact_v2 import write_meta as _write
from tests.production.compact_v2 import write_v2

_CODERS = {
    "zlib": (lambda data: zlib.compress(data, 9), zlib.decompress),
    "lzma": (
        lambda data: lzma.compress(data, format=lzma.FORMAT_RAW, filters=lzma_filters("lzma", len(data))),
        lambda data: lzma.decompress(data, format=lzma.FORMAT_RAW, filters=lzma_filters("lzma", 1 << 23)),
    ),
}


def _pruned(shape, sparsity=0.9, seed=0, levels=None):
    """Magnitude-pruned gaussian weights; with ``levels``, values drawn from that many shared values (compressible)."""
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal(shape).astype(np.float32)
    if levels:
        weights = rng.choice(np.linspace(0.5, 2.0, levels).astype(np.float32), size=shape) * np.sign(weights)
    weights[np.abs(rng.standard_normal(shape)) < np.quantile(np.abs(rng.standard_normal(10_000)), sparsity)] = 0
    return weights


def _int8_expected(weights):
    """What int8 storage must give back: symmetric per-row int8, dequantised in float32."""
    rows = weights.reshape(weights.shape[0], -1).astype(np.float64)
    peak = np.abs(rows).max(axis=1)
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(rows / scale[:, None].astype(np.float64)), -127, 127).astype(np.int8)
    return (q.astype(np.float32) * scale[:, None]).reshape(weights.shape), q, scale


def _metadata(path) -> dict:
    data = path.read_bytes()
    return json.loads(json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])["__metadata__"]["prunekit"])


def test_a_version_2_int8_file_with_coded_values_loads_equal(tmp_path):
    state = {"fc.weight": _pruned((256, 512), levels=6), "fc.bias": np.linspace(-1, 1, 256, dtype=np.float32)}
    write_v2(tmp_path / "m.safetensors", state, dtype="int8")
    arrays, header = load_compact(tmp_path / "m.safetensors")
    entry = header.tensors["fc.weight"]
    assert header.format_version == 2
    assert entry.values_codec in ("zlib", "lzma") and entry.index_codec in ("zlib", "lzma")
    stored = load_st((tmp_path / "m.safetensors").read_bytes())
    assert stored["fc.weight:values"].nbytes < entry.nnz  # fewer bytes than one int8 per nonzero
    expected, _, _ = _int8_expected(state["fc.weight"])
    np.testing.assert_array_equal(arrays["fc.weight"], expected)
    # write_v2 encodes with today's rules: vectors in float16 under int8 (version 2 kept them exact)
    np.testing.assert_array_equal(arrays["fc.bias"], state["fc.bias"].astype(np.float16).astype(np.float32))
    sparse, _ = load_compact_sparse(tmp_path / "m.safetensors")
    np.testing.assert_array_equal(sparse["fc.weight"].to_dense(), expected)


@pytest.mark.parametrize("codec", ["zlib", "lzma"])
@pytest.mark.parametrize("layout_sparsity", [0.5, 0.97])  # bitmask, gaps
def test_each_codec_round_trips_fp32_values_bit_for_bit(tmp_path, codec, layout_sparsity):
    weights = _pruned((128, 128), layout_sparsity, levels=5)
    path = tmp_path / "m.safetensors"
    write_v2(path, {"w": weights})
    meta, stored = _metadata(path), load_st(path.read_bytes())
    entry = meta["tensors"]["w"]
    raw = stored["w:values"].tobytes()
    if entry.get("zv", "none") != "none":
        raw = _CODERS[entry["zv"]][1](raw)
    packed = np.frombuffer(_CODERS[codec][0](raw), np.uint8)
    parts = {"w:values": packed, "w:index": stored["w:index"]}
    entry.update(zv=codec, crc=_crc(packed, stored["w:index"]))
    _write(path, meta, parts)
    arrays, _ = load_compact(path)
    assert arrays["w"].tobytes() == weights.tobytes()


def _write_v1(path, arrays) -> None:
    """A version 1 int8 file as prunekit 0.1 wrote it: raw int8 values, a deflated bitmask, ``"z": 1``."""
    tensors, parts = {}, {}
    for name, weights in arrays.items():
        _, q, scale = _int8_expected(weights)
        keep = q.reshape(-1) != 0
        values = q.reshape(-1)[keep]
        index = np.frombuffer(zlib.compress(np.packbits(keep, bitorder="little").tobytes(), 9), np.uint8)
        parts.update({f"{name}:values": values, f"{name}:index": index, f"{name}:scale": scale})
        tensors[name] = {
            "shape": list(weights.shape),
            "dtype": "float32",
            "nnz": int(keep.sum()),
            "crc": _crc(values, index, scale),
            "store": "int8",
            "layout": "bitmask",
            "z": 1,
        }
    meta = {"format": "prunekit.artifacts.compact", "format_version": 1, "prunekit_version": "0.1.0"}
    meta.update(framework="numpy", dtype="int8", sparsity=0.9, tensors=tensors, plan=None, extra={})
    _write(path, meta, parts)


def test_a_version_1_file_still_loads(tmp_path):
    weights = {"conv.weight": _pruned((16, 8, 3, 3), 0.6, 1), "fc.weight": _pruned((64, 256), 0.9, 2)}
    _write_v1(tmp_path / "v1.safetensors", weights)
    arrays, header = load_compact(tmp_path / "v1.safetensors")
    assert header.format_version == 1
    assert header.tensors["fc.weight"].index_codec == "zlib" and header.tensors["fc.weight"].values_codec == "none"
    for name, original in weights.items():
        np.testing.assert_array_equal(arrays[name], _int8_expected(original)[0])


@pytest.mark.parametrize("codec", ["zlib", "lzma"])
def test_a_values_stream_that_inflates_past_its_shape_is_refused_before_it_balloons(tmp_path, codec):
    # 64 MiB of zeros in a few KB, compressed a MiB at a time so that building it does not raise the peak RSS
    coder = zlib.compressobj(9) if codec == "zlib" else lzma.LZMACompressor(lzma.FORMAT_RAW, filters=lzma_filters("lzma", 2**26))
    chunk = bytes(2**20)
    bomb = np.frombuffer(b"".join(coder.compress(chunk) for _ in range(64)) + coder.flush(), np.uint8)
    index = np.frombuffer(np.packbits(np.ones(16, bool), bitorder="little").tobytes(), np.uint8)
    meta = {"format": "prunekit.artifacts.compact", "format_version": 2, "prunekit_version": "0.1.0"}
    entry = {"shape": [4, 4], "dtype": "float32", "nnz": 16, "crc": _crc(bomb, index), "layout": "bitmask", "zv": codec}
    meta.update(framework="numpy", dtype="fp32", tensors={"w": entry})
    _write(tmp_path / "m.safetensors", meta, {"w:values": bomb, "w:index": index})
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CorruptFileError, match=rf"tensor 'w' .*values {codec} stream inflates past the 64 bytes"):
        load_compact(tmp_path / "m.safetensors")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 32 * 1024  # KiB: far below the 64 MiB


def _coded_file(tmp_path):
    path = tmp_path / "m.safetensors"
    meta = write_v2(path, {"fc.weight": _pruned((256, 512), levels=6)}, dtype="int8")
    assert meta["tensors"]["fc.weight"]["zv"] != "none"
    return path


def test_a_flipped_byte_in_a_coded_values_stream_is_detected_naming_the_tensor(tmp_path):
    path = _coded_file(tmp_path)
    stored = load_st(path.read_bytes())
    data = bytearray(path.read_bytes())
    at = bytes(data).index(stored["fc.weight:values"].tobytes()) + 10
    data[at] ^= 0x5A
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match=r"tensor 'fc\.weight' is corrupted \(CRC-32"):
        load_compact(path)


@pytest.mark.parametrize("cut", ["garbled", "truncated"])
def test_a_malformed_coded_stream_with_a_matching_crc_is_refused_naming_the_tensor(tmp_path, cut):
    path = _coded_file(tmp_path)
    meta, stored = _metadata(path), load_st(path.read_bytes())
    values = stored["fc.weight:values"]
    values = values[: values.size // 2] if cut == "truncated" else values[::-1].copy()
    stored["fc.weight:values"] = values
    meta["tensors"]["fc.weight"]["crc"] = _crc(*(stored[f"fc.weight:{p}"] for p in ("values", "index", "scale")))
    _write(path, meta, stored)
    with pytest.raises(CorruptFileError, match=r"tensor 'fc\.weight' is corrupted \(values (zlib|lzma) stream"):
        load_compact(path)


def test_an_unknown_codec_is_refused_naming_the_field(tmp_path):
    path = _coded_file(tmp_path)
    meta, stored = _metadata(path), load_st(path.read_bytes())
    meta["tensors"]["fc.weight"]["zv"] = "brotli"
    _write(path, meta, stored)
    with pytest.raises(CorruptFileError, match=r"tensor 'fc\.weight'.*field 'zv' should be one of none, zlib, lzma, lzmaCPB"):
        load_compact(path)


def _fixture_state():
    """The arrays the files in tests/production/data were written from (by prunekit's version 2 writer)."""
    rng = np.random.default_rng(2026)
    fc = (rng.choice([-2.0, -1.0, 1.0, 2.0], size=(64, 128)) * rng.random((64, 128)).round(1)).astype(np.float32)
    fc[rng.random((64, 128)) < 0.9] = 0
    conv = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    conv[np.abs(conv) < 0.6] = 0
    bias = rng.standard_normal(32).astype(np.float32)
    return {"fc.weight": fc, "conv.weight": conv, "fc.bias": bias, "bn.num_batches_tracked": np.array(5, np.int64)}


@pytest.mark.parametrize("dtype", ["fp32", "int8"])
def test_files_written_by_the_version_2_writer_still_load(dtype):
    from pathlib import Path

    path = Path(__file__).parent / "data" / f"compact_v2_{dtype}.safetensors"
    arrays, header = load_compact(path)
    assert header.format_version == 2 and header.tensors["fc.weight"].values_codec in ("zlib", "lzma")
    for name, original in _fixture_state().items():
        canonical = np.where(original == 0, np.zeros((), original.dtype), original)  # -0.0 loads as +0.0
        expected = _int8_expected(original)[0] if dtype == "int8" and original.ndim >= 2 else canonical
        assert arrays[name].tobytes() == expected.tobytes() and arrays[name].shape == original.shape, name
