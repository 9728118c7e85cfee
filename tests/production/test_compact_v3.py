"""Format version 3 of the compact file: one data blob of coded streams and a coded per-tensor table."""

from __future__ import annotations

import json
import resource
import zlib

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load as load_st
from safetensors.numpy import save as save_st

from prunekit.artifacts.compact import FORMAT_VERSION, load_compact, read_compact_header, save_compact
from prunekit.artifacts.compact_codecs import unpack
from prunekit.errors import ConfigError, CorruptFileError


def _pruned(shape, sparsity=0.9, seed=0):
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal(shape).astype(np.float32)
    weights[np.abs(weights) < np.quantile(np.abs(weights), sparsity)] = 0
    return weights


def _state():
    rng = np.random.default_rng(3)
    return {
        "fc.weight": _pruned((128, 256)),
        "fc.bias": rng.standard_normal(128).astype(np.float32),
        "bn.running_var": rng.random(128).astype(np.float32) + 0.5,
        "bn.num_batches_tracked": np.array(12, np.int64),
    }


def _open(path):
    """(plain summary, table, data blob) of a version 3 file."""
    raw = path.read_bytes()
    summary = json.loads(json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])["__metadata__"]["prunekit"])
    stored = load_st(raw)
    codec, _, size, _ = summary["table"]
    table = json.loads(unpack(codec, stored["prunekit:table"].tobytes(), size, "test"))
    return summary, table, stored["prunekit:data"].tobytes()


def _save(path, summary, table, data, coded_table=None, declared=None):
    """Write a version 3 file from its parts, with valid CRCs for the table and the plain metadata."""
    text = json.dumps(table).encode()
    coded = zlib.compress(text) if coded_table is None else coded_table
    summary["table"] = ["zlib", len(coded), len(text) if declared is None else declared, zlib.crc32(coded)]
    meta = json.dumps(summary)
    blobs = {"prunekit:table": np.frombuffer(coded, np.uint8), "prunekit:data": np.frombuffer(data, np.uint8)}
    path.write_bytes(save_st(blobs, metadata={"prunekit": meta, "prunekit_crc32": str(zlib.crc32(meta.encode()))}))


def test_round_trip_is_exact_and_any_safetensors_reader_lists_the_file(tmp_path):
    path = tmp_path / "m.safetensors"
    header = save_compact(_state(), path)
    assert header.format_version == FORMAT_VERSION == 4
    with safe_open(path, "np") as handle:
        assert sorted(handle.keys()) == ["prunekit:data", "prunekit:table"]
        assert json.loads(handle.metadata()["prunekit"])["format_version"] == 4
    arrays, loaded = load_compact(path)
    for name, array in _state().items():
        assert arrays[name].tobytes() == array.tobytes() and arrays[name].shape == array.shape, name
    assert loaded.tensors == header.tensors == read_compact_header(path).tensors


def test_a_version_3_file_still_reads(tmp_path):
    path = tmp_path / "m.safetensors"
    save_compact(_state(), path, dtype="int8", entropy="fast")  # zlib streams only: what version 3 wrote
    expected, _ = load_compact(path)
    summary, table, data = _open(path)
    summary["format_version"] = 3
    _save(path, summary, table, data)
    arrays, header = load_compact(path)
    assert header.format_version == 3
    for name, array in expected.items():
        assert arrays[name].tobytes() == array.tobytes(), name


def test_small_dense_tensors_and_scales_share_one_stream_and_keep_their_own_crc(tmp_path):
    path = tmp_path / "m.safetensors"
    save_compact(_state(), path, dtype="int8")
    _, table, _ = _open(path)
    parts = table["tensors"]
    shared = {parts[name]["parts"]["values"][0] for name in ("fc.bias", "bn.running_var", "bn.num_batches_tracked")}
    assert shared == {parts["fc.weight"]["parts"]["scale"][0]}  # one stream for all of them
    assert len({parts[name]["crc"] for name in parts}) == len(parts)


def test_each_tensor_crc_is_checked_inside_a_shared_stream(tmp_path):
    path = tmp_path / "m.safetensors"
    save_compact(_state(), path)
    summary, table, data = _open(path)
    bias, var = table["tensors"]["fc.bias"]["parts"]["values"], table["tensors"]["bn.running_var"]["parts"]["values"]
    bias[1], var[1] = var[1], bias[1]  # the two tensors swap places: every stream CRC still matches
    _save(path, summary, table, data)
    with pytest.raises(CorruptFileError, match=r"tensor '(fc\.bias|bn\.running_var)' is corrupted \(CRC-32"):
        load_compact(path)


def test_a_flipped_byte_in_a_stream_is_caught_before_inflating_naming_its_tensors(tmp_path):
    path = tmp_path / "m.safetensors"
    save_compact({"fc.weight": _pruned((128, 256))}, path, dtype="int8")
    summary, table, data = _open(path)
    flipped = bytearray(data)
    flipped[5] ^= 0x10  # the first stream: fc.weight's values
    _save(path, summary, table, bytes(flipped))
    with pytest.raises(CorruptFileError, match=r"tensor 'fc\.weight' is corrupted \(CRC-32 .* of its stream 0"):
        load_compact(path)


def test_a_stream_that_inflates_past_its_declared_size_is_refused_before_it_balloons(tmp_path):
    path = tmp_path / "m.safetensors"
    save_compact({"w": np.ones((4, 4), np.float32)}, path)  # 64 bytes, one stream
    summary, table, _ = _open(path)
    coder = zlib.compressobj(9)
    bomb = b"".join(coder.compress(bytes(2**20)) for _ in range(64)) + coder.flush()  # 64 MiB of zeros
    table["streams"] = [["zlib", len(bomb), 64, zlib.crc32(bomb)]]
    _save(path, summary, table, bomb)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CorruptFileError, match=r"tensor 'w' is corrupted \(stream 0: zlib stream inflates past the 64 bytes"):
        load_compact(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 32 * 1024  # KiB: far below the 64 MiB


def test_a_stream_declaring_more_than_its_tensors_hold_is_refused_before_inflating(tmp_path):
    path = tmp_path / "m.safetensors"
    save_compact({"w": np.ones((4, 4), np.float32)}, path)
    summary, table, data = _open(path)
    table["streams"][0][2] = 2**40
    _save(path, summary, table, data)
    with pytest.raises(
        CorruptFileError, match=r"stream 0 \(tensor 'w'\) declares 1099511627776 bytes, more than its tensors use \(64\)"
    ):
        load_compact(path)


def test_a_reference_past_what_the_shape_allows_is_refused_naming_tensor_and_field(tmp_path):
    path = tmp_path / "m.safetensors"
    save_compact({"w": np.ones((4, 4), np.float32)}, path)
    summary, table, data = _open(path)
    table["tensors"]["w"]["parts"]["values"] = [0, 0, 128]
    _save(path, summary, table, data)
    with pytest.raises(CorruptFileError, match=r"tensor 'w' is corrupted \(its values reference \[0, 0, 128\] .* 64 bytes"):
        load_compact(path)
    table["tensors"]["w"]["parts"] = {}
    _save(path, summary, table, data)
    with pytest.raises(CorruptFileError, match=r"tensor 'w' lacks a valid reference to its values \(field 'parts'\)"):
        load_compact(path)


@pytest.mark.parametrize(
    ("declared", "message"), [(2**40, "over the 268,435,456 a table may take"), (1000, "inflates past the 1000 bytes")]
)
def test_a_table_bomb_is_refused_before_it_balloons(tmp_path, declared, message):
    path = tmp_path / "m.safetensors"
    save_compact(_state(), path)
    summary, table, data = _open(path)
    _save(path, summary, table, data, coded_table=zlib.compress(bytes(100 * 2**20), 9), declared=declared)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CorruptFileError, match=rf"m\.safetensors: the tensor table is corrupted \(.*{message}"):
        load_compact(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 32 * 1024


def test_a_flipped_byte_in_the_table_is_caught(tmp_path):
    path = tmp_path / "m.safetensors"
    save_compact(_state(), path)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # the table is the last tensor of the container
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="the tensor table fails its CRC-32 check"):
        load_compact(path)


def test_fast_entropy_uses_zlib_only_and_best_is_never_larger(tmp_path):
    state = _state()
    fast = save_compact(state, tmp_path / "fast.safetensors", dtype="int8", entropy="fast")
    save_compact(state, tmp_path / "best.safetensors", dtype="int8", entropy="best")
    assert {stream[0] for stream in _open(tmp_path / "fast.safetensors")[1]["streams"]} <= {"zlib", "none"}
    assert (tmp_path / "best.safetensors").stat().st_size <= (tmp_path / "fast.safetensors").stat().st_size
    fast_arrays, best_arrays = (load_compact(tmp_path / f"{name}.safetensors")[0] for name in ("fast", "best"))
    for name, array in fast_arrays.items():
        assert best_arrays[name].tobytes() == array.tobytes(), name
    assert fast.tensors["fc.weight"].storage == "int8"


def test_an_unknown_entropy_mode_is_a_config_error_listing_the_modes(tmp_path):
    with pytest.raises(ConfigError, match="entropy should be one of auto, fast, best, got 'max'"):
        save_compact(_state(), tmp_path / "m.safetensors", entropy="max")


def test_a_stream_longer_than_the_codec_sample_round_trips_bit_for_bit_with_best(tmp_path):
    from prunekit.artifacts.compact_codecs import SAMPLE_BYTES

    weights = _pruned((256, 1024), 0.5, seed=7)  # 512 KiB of float32 values: coded with the sample's winner
    assert weights[weights != 0].nbytes > SAMPLE_BYTES
    save_compact({"w": weights}, tmp_path / "m.safetensors", entropy="best")
    streams = _open(tmp_path / "m.safetensors")[1]["streams"]
    assert streams[0][0].startswith("lzma") and streams[0][1] < streams[0][2]  # values: coded and smaller
    arrays, _ = load_compact(tmp_path / "m.safetensors")
    assert arrays["w"].tobytes() == weights.tobytes()


def test_every_flipped_bit_or_cut_is_a_corrupt_file_error_or_changes_nothing(tmp_path):
    path = tmp_path / "m.safetensors"
    state = {"fc.weight": _pruned((32, 64)), "fc.bias": np.arange(32, dtype=np.float32), "n": np.array(3, np.int64)}
    save_compact(state, path, dtype="int8")
    good, (expected, _) = path.read_bytes(), load_compact(path)
    changed = [bytes(good[:at]) + bytes([good[at] ^ bit]) + good[at + 1 :] for at in range(len(good)) for bit in (1,)]
    for data in changed + [good[:cut] for cut in range(len(good))]:
        path.write_bytes(data)
        try:
            arrays, _ = load_compact(path)
        except CorruptFileError:
            continue
        assert all(arrays[name].tobytes() == expected[name].tobytes() for name in state)  # e.g. header padding


def test_a_row_keyed_stream_that_holds_no_int8_values_is_a_corrupt_file_error(tmp_path):
    path = tmp_path / "m.safetensors"
    save_compact(_state(), path, dtype="int8", entropy="fast")
    summary, table, data = _open(path)
    shared = table["tensors"]["fc.bias"]["parts"]["values"][0]  # the shared stream of vectors and scales
    table["streams"][shared][0] = "cms1"
    _save(path, summary, table, data)
    with pytest.raises(CorruptFileError, match=r"stream \d+ is coded with cms1 but does not hold one int8 tensor's values"):
        load_compact(path)
