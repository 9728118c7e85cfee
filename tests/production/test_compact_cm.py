"""The context-mixing codecs of compact format version 4: exact round trips, bounded and strict decoding."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load as load_st

from prunekit.artifacts import cm_codec
from prunekit.artifacts.cm_codec import cm_decode, cm_encode, row_contexts
from prunekit.artifacts.compact import load_compact, save_compact
from prunekit.artifacts.compact_codecs import pack, unpack
from prunekit.artifacts.compact_container import row_counts

RNG = np.random.default_rng(11)


def _mask(rows: int, columns: int, density: np.ndarray | float) -> bytes:
    bits = RNG.random((rows, columns)) < density
    return np.packbits(bits.reshape(-1), bitorder="little").tobytes()


MASKS = {
    "random": (64, 96, _mask(64, 96, 0.3)),
    "rows of different density": (32, 512, _mask(32, 512, RNG.random((32, 1)) * 0.3)),
    "all zeros": (16, 64, bytes(128)),
    "all ones": (16, 64, b"\xff" * 128),
    "one element": (1, 1, b"\x01"),
    "1-D": (1, 4000, _mask(1, 4000, 0.05)),
    "a row longer than the column statistics": (2, 70000, _mask(2, 70000, 0.02)),
}


@pytest.mark.parametrize("name", list(MASKS))
def test_a_bitmask_round_trips_exactly(name):
    _, columns, data = MASKS[name]
    coded = cm_encode(f"cmm{columns}", data)
    if coded is None:  # kept as it is: only when coding would not shrink it
        assert name == "one element"
        return
    assert cm_decode(f"cmm{columns}", coded, len(data)) == data


def test_a_bitmask_with_dense_and_empty_rows_codes_below_its_order_0_entropy():
    density = np.repeat([0.02, 0.4], 64)[:, None]  # magnitude pruning leaves rows of very different density
    data = _mask(128, 1024, density)
    ones = np.unpackbits(np.frombuffer(data, np.uint8)).mean()
    order_0 = -(ones * np.log2(ones) + (1 - ones) * np.log2(1 - ones)) * len(data)  # bytes
    coded = cm_encode("cmm1024", data)
    assert coded is not None and len(coded) < 0.9 * order_0
    assert cm_decode("cmm1024", coded, len(data)) == data


VALUES = {
    "laplacian int8": np.clip(np.rint(RNG.laplace(0, 20, 5000)), -127, 127).astype(np.int8).tobytes(),
    "extremes": np.array([-128, 127, -127, 0, 1, -1] * 300, np.int8).tobytes(),
    "all zeros": bytes(3000),
    "one byte": b"\x80",
    "float32": (RNG.standard_normal(2000) * 0.1).astype(np.float32).tobytes(),
}


@pytest.mark.parametrize("width", [1, 4])
@pytest.mark.parametrize("name", list(VALUES))
def test_bytes_round_trip_exactly(name, width):
    data = VALUES[name]
    coded = cm_encode(f"cmb{width}", data)
    if coded is None:
        assert name == "one byte"
        return
    assert len(coded) < len(data)
    assert cm_decode(f"cmb{width}", coded, len(data)) == data


def test_random_bytes_are_not_coded_larger_than_they_are():
    data = RNG.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    assert cm_encode("cmb1", data) is None
    assert pack(data, ("cmb1",)) == ("none", data)


def test_the_plain_python_kernels_write_the_same_bytes_as_numba():
    pytest.importorskip("numba")
    mask, values = MASKS["rows of different density"][2][:400], VALUES["laplacian int8"][:600]
    compiled = cm_encode("cmm512", mask), cm_encode("cmb1", values)
    plain = cm_codec._kernels(False)
    original = cm_codec._kernels
    try:
        cm_codec._kernels = lambda _compiled: plain  # type: ignore[assignment]
        assert (cm_encode("cmm512", mask), cm_encode("cmb1", values)) == compiled
        assert cm_decode("cmb1", compiled[1] or b"", len(values)) == values
    finally:
        cm_codec._kernels = original  # type: ignore[assignment]


@pytest.mark.parametrize("codec", ["cmm1024", "cmb1"])
def test_a_truncated_padded_or_oversized_stream_is_refused(codec):
    data = MASKS["rows of different density"][2] if codec == "cmm1024" else VALUES["laplacian int8"]
    coded = cm_encode(codec, data)
    assert coded is not None
    with pytest.raises(ValueError, match="truncated, padded or corrupted"):
        unpack(codec, coded[: len(coded) // 2], len(data), "test")
    with pytest.raises(ValueError, match="truncated, padded or corrupted"):
        unpack(codec, coded + bytes(8), len(data), "test")
    with pytest.raises(ValueError, match=f"declares {len(data)} bytes, more than the {len(data) - 1} allowed"):
        unpack(codec, coded, len(data) - 1, "test")


def test_best_entropy_codes_a_pruned_matrix_with_the_mask_coder_and_loads_it_bit_for_bit(tmp_path):
    weights = RNG.standard_normal((128, 512)).astype(np.float32)
    weights *= RNG.random((1, 512)).astype(np.float32) * 2  # input columns of different scale
    weights[np.abs(weights) < np.quantile(np.abs(weights), 0.9)] = 0
    state = {"w": weights}
    best = save_compact(state, tmp_path / "best.safetensors", dtype="int8", entropy="best")
    save_compact(state, tmp_path / "fast.safetensors", dtype="int8", entropy="fast")
    assert best.format_version == 4 and best.tensors["w"].layout == "bitmask"
    assert (tmp_path / "best.safetensors").stat().st_size < 0.9 * (tmp_path / "fast.safetensors").stat().st_size
    fast_arrays, _ = load_compact(tmp_path / "fast.safetensors")
    best_arrays, _ = load_compact(tmp_path / "best.safetensors")
    assert best_arrays["w"].tobytes() == fast_arrays["w"].tobytes()


def test_without_numba_only_small_streams_try_the_context_mixing_codecs(monkeypatch):
    small = MASKS["rows of different density"][2]
    large = np.clip(np.rint(RNG.laplace(0, 20, 70_000)), -127, 127).astype(np.int8).tobytes()  # over PLAIN_PYTHON_BYTES
    assert pack(large, ("lzma000", "cmb1"))[0] == "cmb1"
    monkeypatch.setattr(cm_codec, "HAVE_NUMBA", False)
    assert pack(small, ("zlib", "cmm"), row=512)[0] == "cmm512"
    assert pack(large, ("lzma000", "cmb1"))[0] == "lzma000"


def test_row_counts_count_each_rows_set_bits_across_byte_boundaries():
    bits = RNG.random((7, 13)) < 0.4  # rows of 13 bits: no row starts on a byte
    packed = np.packbits(bits.reshape(-1), bitorder="little")
    np.testing.assert_array_equal(row_counts((7, 13), packed), bits.sum(axis=1))
    np.testing.assert_array_equal(row_counts((7, 13), None), np.full(7, 13))


def test_row_contexts_are_half_octaves_of_the_scale_from_the_median_row():
    scale = np.array([1.0, 1.0, 2.0, 0.25, 1.5, 2.0**-20], np.float32)
    np.testing.assert_array_equal(row_contexts(scale, np.array([1, 0, 2, 1, 1, 1])), [8, 10, 10, 4, 9, 0])


def test_int8_values_keyed_by_their_rows_scale_round_trip_and_need_those_keys():
    side = RNG.permutation(np.repeat(np.arange(16), 300))  # shuffled: the running contexts cannot guess the key
    values = np.clip(np.rint(RNG.laplace(0, 1, side.size) * (side + 1) * 4), -127, 127).astype(np.int8).tobytes()
    coded = cm_encode("cms1", values, side)
    assert coded is not None and len(coded) < len(cm_encode("cmb1", values) or values)  # the keys pay
    assert cm_decode("cms1", coded, len(values), side) == values
    with pytest.raises(ValueError, match=f"declares {len(values)} values, but its tensor has 10 nonzeros"):
        cm_decode("cms1", coded, len(values), side[:10])


def test_best_entropy_keys_int8_values_by_their_rows_scale_when_that_is_smaller(tmp_path):
    weights = RNG.standard_normal((256, 256)).astype(np.float32) * np.geomspace(0.01, 1, 256, dtype=np.float32)[:, None]
    weights[np.abs(weights) < np.quantile(np.abs(weights), 0.8)] = 0  # one global threshold: rows of every scale
    save_compact({"w": weights}, tmp_path / "best.safetensors", dtype="int8", entropy="best")
    save_compact({"w": weights}, tmp_path / "fast.safetensors", dtype="int8", entropy="fast")
    table = json.loads(unpack(*_table(tmp_path / "best.safetensors")))
    assert table["streams"][table["tensors"]["w"]["parts"]["values"][0]][0] == "cms1"
    best, fast = load_compact(tmp_path / "best.safetensors")[0], load_compact(tmp_path / "fast.safetensors")[0]
    assert best["w"].tobytes() == fast["w"].tobytes()


def _table(path):
    raw = path.read_bytes()
    summary = json.loads(json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])["__metadata__"]["prunekit"])
    codec, _, size, _ = summary["table"]
    return codec, load_st(raw)["prunekit:table"].tobytes(), size, "test"


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 40),
    columns=st.integers(1, 300),
    density=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_bitmask_round_trips_or_is_kept_as_it_is(rows, columns, density, seed):
    bits = np.random.default_rng(seed).random(rows * columns) < density
    data = np.packbits(bits, bitorder="little").tobytes()
    codec, stored = pack(data, ("cmm",), row=columns)
    assert unpack(codec, stored, len(data), "test") == data


@settings(max_examples=40, deadline=None)
@given(values=st.binary(min_size=0, max_size=3000), width=st.sampled_from([1, 2, 4]))
def test_any_bytes_round_trip_or_are_kept_as_they_are(values, width):
    codec, stored = pack(values, (f"cmb{width}",))
    assert unpack(codec, stored, len(values), "test") == values
    side = np.arange(len(values), dtype=np.int64) % 16
    coded = cm_encode("cms1", values, side)
    assert coded is None or cm_decode("cms1", coded, len(values), side) == values
