"""The compact sparse model file: one safetensors file that stores only the nonzeros.

Framework-free (numpy + safetensors): ``prunekit.torch.save_compressed`` adapts a model to the
``{name: array}`` dicts used here (the Keras backend writes no compact file yet).

Each floating-point tensor is stored as its nonzero values plus where they are: a bitmask
(1 bit per element) or relative indices (1 byte per nonzero, Deep Compression style, with a
filler zero for gaps over 256), whichever is smaller. The index and the values streams are each
entropy-coded (``compact_codecs``: zlib, raw LZMA2 with a tuned literal model or, from version 4, a
context-mixing arithmetic coder, whichever is smallest, or kept as they are when nothing helps;
version 1 files deflate only the index).
Values are kept exactly (``"fp32"``: every tensor in its own dtype, bit for
bit), in float16 (``"fp16"``) or in int8 with one float32 scale per output channel (``"int8"``,
symmetric, so a zero stays exactly zero; tensors of fewer than 2 dimensions, such as biases and
norm statistics, in float16, or exact where float16 would overflow them). Tensors for which the sparse layout is not smaller, and
non-float tensors, are stored dense. Zeros are canonical: a ``-0.0`` weight (left by masking
with a multiply) is a zero like any other and loads as ``+0.0``; every other value, NaN
payloads included, round-trips bit for bit in ``"fp32"``.

The safetensors header's metadata holds one readable JSON object under ``"prunekit"``: the format
name and version, the prunekit version, the framework, the storage dtype, the overall sparsity,
an optional structured pruning plan and where the coded per-tensor table is; the table and the
coded streams are two uint8 tensors (``compact_container``; version 2 files kept a tensor per
part and the table in the metadata, and still read). Reading checks all of it and raises
:class:`~prunekit.errors.CorruptFileError` naming the file and tensor for a truncated, corrupted
or newer-version file.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prunekit.artifacts.cm_codec import row_contexts
from prunekit.artifacts.compact_codecs import candidates, is_codec, pack, pack_values, unpack
from prunekit.artifacts.compact_container import (
    DATA_TENSOR,
    GROUP_BYTES,
    MAX_GAP,
    TABLE_TENSOR,
    StreamWriter,
    inflate_streams,
    is_int,
    read_table,
    row_counts,
)
from prunekit.core.atomic import atomic_write_bytes
from prunekit.errors import ConfigError, CorruptFileError

FORMAT_NAME = "prunekit.artifacts.compact"
FORMAT_VERSION = 4  # 4: context-mixing codecs; 3: one data blob + a coded table; 2: a tensor per coded part; 1: raw values
STORAGE_DTYPES = ("fp32", "fp16", "int8")
_META_KEY = "prunekit"
_META_CRC_KEY = "prunekit_crc32"
_MAX_DIM = 2**40  # no real tensor dimension is this large; a bigger one is a crafted file
#: Default cap on the bytes a compact file may declare (decoded tensors), checked before anything is decoded.
MAX_DECODED_BYTES = 2**36


@dataclass(frozen=True)
class TensorEntry:
    """How one tensor is stored: shape and dtype as saved, storage, layout, nonzeros, checksum."""

    shape: tuple[int, ...]
    dtype: str
    storage: str  # "raw" (own dtype), "float16" or "int8"
    layout: str  # "dense", "bitmask" or "gaps"
    nnz: int
    crc32: int
    index_codec: str = "none"  # "none", "zlib" or "lzma"
    values_codec: str = "none"

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nnz / self.numel if self.numel else 0.0

    def to_json(self) -> dict[str, Any]:
        """Compact JSON: fields at their default (raw storage, dense layout, not entropy-coded) are left out."""
        value: dict[str, Any] = {"shape": list(self.shape), "dtype": self.dtype, "nnz": self.nnz, "crc": self.crc32}
        if self.storage != "raw":
            value["store"] = self.storage
        if self.layout != "dense":
            value["layout"] = self.layout
        if self.index_codec != "none":
            value["zi"] = self.index_codec
        if self.values_codec != "none":
            value["zv"] = self.values_codec
        return value

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> TensorEntry:
        """The entry of a header; ``ValueError`` naming the field when one is missing or out of range."""
        if not isinstance(value, Mapping):
            raise ValueError(f"entry should be a mapping, got {type(value).__name__}")
        missing = [key for key in ("shape", "dtype", "nnz", "crc") if key not in value]
        if missing:
            raise ValueError(f"field {missing[0]!r} is missing")
        shape = value["shape"]
        if not isinstance(shape, list) or not all(is_int(d) and 0 <= d < _MAX_DIM for d in shape):
            raise ValueError(f"field 'shape' should be a list of non-negative integers, got {shape!r}"[:200])
        try:
            np.dtype(str(value["dtype"]))
        except TypeError:
            raise ValueError(f"field 'dtype' names no dtype: {value['dtype']!r}") from None
        numel = math.prod(shape)
        if not is_int(value["nnz"]) or not 0 <= value["nnz"] <= numel:
            raise ValueError(f"field 'nnz' should be an integer in [0, {numel}], got {value['nnz']!r}")
        if not is_int(value["crc"]) or not 0 <= value["crc"] < 2**32:
            raise ValueError(f"field 'crc' should be a 32-bit checksum, got {value['crc']!r}")
        entry = cls(
            tuple(shape),
            str(value["dtype"]),
            str(value.get("store", "raw")),
            str(value.get("layout", "dense")),
            value["nnz"],
            value["crc"],
            str(value.get("zi", "zlib" if value.get("z") else "none")),  # "z": 1 is version 1's deflated index
            str(value.get("zv", "none")),
        )
        if entry.storage not in ("raw", "float16", "int8"):
            raise ValueError(f"field 'store' should be raw, float16 or int8, got {entry.storage!r}")
        if entry.layout not in ("dense", "bitmask", "gaps"):
            raise ValueError(f"field 'layout' should be dense, bitmask or gaps, got {entry.layout!r}")
        for key, codec in (("zi", entry.index_codec), ("zv", entry.values_codec)):
            if not is_codec(codec):
                raise ValueError(f"field {key!r} should be one of none, zlib, lzma, lzmaCPB, got {codec!r}"[:200])
        if entry.storage == "int8" and not shape:
            raise ValueError("int8 storage needs at least one dimension (its per-channel scales)")
        return entry


@dataclass(frozen=True)
class CompactHeader:
    """The metadata of a compact file: versions, framework, storage dtype, tensors, plan.

    Example::

        header = read_compact_header("model.safetensors")
        header.sparsity, header.tensors["fc1.weight"].layout, header.plan
    """

    format_version: int
    prunekit_version: str
    framework: str
    dtype: str
    tensors: dict[str, TensorEntry]
    plan: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def sparsity(self) -> float:
        """Fraction of zeros over all floating-point elements."""
        floats = [e for e in self.tensors.values() if np.dtype(e.dtype).kind == "f"]
        total = sum(e.numel for e in floats)
        return 1.0 - sum(e.nnz for e in floats) / total if total else 0.0

    @property
    def information_limit_bytes(self) -> int:
        """``nnz x bits / 8 + numel / 8`` summed over the stored tensors: what an ideal mask + values costs."""
        bits = 0
        for entry in self.tensors.values():
            value_bits = {"float16": 16, "int8": 8}.get(entry.storage, np.dtype(entry.dtype).itemsize * 8)
            if entry.layout == "dense":
                bits += entry.numel * value_bits
            else:
                bits += entry.nnz * value_bits + entry.numel
            if entry.storage == "int8":
                bits += entry.shape[0] * 32
        return math.ceil(bits / 8)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "prunekit_version": self.prunekit_version,
            "framework": self.framework,
            "dtype": self.dtype,
            "sparsity": round(self.sparsity, 6),
            "tensors": {name: entry.to_json() for name, entry in self.tensors.items()},
            "plan": self.plan,
            "extra": self.extra,
        }


# --------------------------------------------------------------------------- encoding


def _quantize_int8(name: str, array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel int8: ``q = round(w / scale)``, ``scale = max|w| / 127`` per row of axis 0."""
    rows = array.reshape(array.shape[0], -1).astype(np.float64)
    if not np.isfinite(rows).all():
        raise ConfigError(
            f"tensor {name!r} contains NaN or Inf and cannot be stored as int8; store it with dtype='fp32' or fix the weights"
        )
    peak = np.abs(rows).max(axis=1)
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    quantized = np.clip(np.rint(rows / scale[:, None].astype(np.float64)), -127, 127).astype(np.int8)
    return quantized.reshape(array.shape), scale


def _fits_float16(array: np.ndarray) -> bool:
    """Whether a float tensor wider than float16 keeps every finite value finite in float16: under ``"int8"``
    such tensors of fewer than 2 dimensions (biases, norm statistics) are stored in float16 (a relative error
    of at most 2^-11, far below the int8 weights' own); others stay exact."""
    if array.dtype.itemsize <= 2:
        return False
    with np.errstate(over="ignore"):
        return bool(np.isfinite(array.astype(np.float16)).sum() == np.isfinite(array).sum())


def _gap_bytes(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Relative index bytes (gap - 1) with filler entries for gaps over 256, and where the real entries sit."""
    gaps = np.diff(positions, prepend=-1)
    fillers = (gaps - 1) // MAX_GAP
    slots = np.cumsum(fillers + 1) - 1  # slot of each real entry in the stream
    stream = np.full(int(slots[-1]) + 1 if len(slots) else 0, MAX_GAP - 1, dtype=np.uint8)
    stream[slots] = gaps - MAX_GAP * fillers - 1
    return stream, slots


def _encode(
    name: str, array: np.ndarray, dtype: str, codecs: tuple[str, ...]
) -> tuple[TensorEntry, dict[str, np.ndarray], tuple[str, bytes] | None]:
    """Choose storage and layout for one tensor: its entry, its uncoded parts (values, index, scale) and
    the index as coded while choosing the layout (so it is not coded twice)."""
    array = np.require(array, requirements="C")  # not ascontiguousarray: it turns 0-d into 1-d
    if array.dtype.kind not in "biuf":
        raise ConfigError(
            f"tensor {name!r} has dtype {array.dtype}; the compact format stores bool, integer and floating-point tensors only"
        )
    if array.dtype.kind != "f" or array.size == 0:
        return (*_entry(array, "raw", "dense", int(np.count_nonzero(array)), {"values": array.reshape(-1)}), None)
    array = np.where(array == 0, np.zeros((), array.dtype), array)  # -0.0 -> +0.0; NaN bits untouched
    scale = None
    if dtype == "int8" and array.ndim >= 2:
        values, scale = _quantize_int8(name, array)
        storage = "int8"
    elif dtype == "fp16" or (dtype == "int8" and _fits_float16(array)):
        values, storage = array.astype(np.float16), "float16"
    else:
        values, storage = array, "raw"
    extra = {} if scale is None else {"scale": scale}
    flat = values.reshape(-1)
    keep = flat != 0  # NaN is a value
    nnz = int(keep.sum())
    candidates: list[tuple[str, np.ndarray, np.ndarray]] = [("bitmask", np.packbits(keep, bitorder="little"), flat[keep])]
    if nnz:
        positions = np.flatnonzero(keep)
        stream, slots = _gap_bytes(positions)
        stored = np.zeros(len(stream), dtype=flat.dtype)
        stored[slots] = flat[positions]
        candidates.append(("gaps", stream, stored))
    # the layout is chosen on uncoded values, as in version 1, so a sparse tensor keeps its sparse layout
    # (load_compact_sparse) even where a regular pattern would compress better dense; then the values are coded.
    # The index sizes compared are zlib's (one fast pass per candidate), or, when the bitmask coder is tried
    # (it models what zlib cannot, so zlib's sizes would mislead), each index coded as it would be stored.
    row = flat.size // values.shape[0] if values.ndim else 1  # a bitmask row: the elements of one output channel
    trial = codecs if "cmm" in codecs else ("zlib",)
    best_size, best = flat.nbytes, None
    for layout, index, stored in candidates:
        coded = pack(index.tobytes(), trial, row if layout == "bitmask" else None)
        size = len(coded[1]) + stored.nbytes + 16  # a stream costs about 16 table bytes
        if size < best_size:
            best_size, best = size, (layout, index, stored, coded)
    if best is None:
        return (*_entry(array, storage, "dense", nnz, {"values": flat, **extra}), None)
    layout, index, stored, coded = best
    coded = coded if trial == codecs else pack(index.tobytes(), codecs, row if layout == "bitmask" else None)
    return (*_entry(array, storage, layout, nnz, {"values": stored, "index": index, **extra}), coded)


def _coded_values(entry: TensorEntry, parts: Mapping[str, np.ndarray], codecs: tuple[str, ...]) -> tuple[str, bytes] | None:
    """The values part of an int8 tensor stored whole or as a bitmask, coded with its row contexts as one more
    candidate (None for any other part: coded as usual)."""
    if entry.storage != "int8" or entry.layout == "gaps" or "cmb1" not in codecs:
        return None
    counts = row_counts(entry.shape, parts["index"] if entry.layout == "bitmask" else None)
    return pack_values(parts["values"].tobytes(), codecs, row_contexts(parts["scale"], counts))


def _entry(
    array: np.ndarray, storage: str, layout: str, nnz: int, parts: dict[str, np.ndarray]
) -> tuple[TensorEntry, dict[str, np.ndarray]]:
    crc = 0
    for part in parts.values():
        crc = zlib.crc32(part.tobytes(), crc)
    return TensorEntry(tuple(array.shape), array.dtype.name, storage, layout, nnz, crc), parts


# --------------------------------------------------------------------------- decoding


def _nonzeros(path: Path, name: str, entry: TensorEntry, parts: Mapping[str, np.ndarray]) -> tuple[np.ndarray | None, np.ndarray]:
    """Check one stored tensor and return its flat positions (None for a dense layout) and stored values."""

    def corrupt(reason: str) -> CorruptFileError:
        return CorruptFileError(f"{path}: tensor {name!r} is corrupted ({reason}); re-export the file with save_compressed")

    try:
        dtype = np.dtype(entry.dtype)
    except TypeError:
        raise corrupt(f"unknown dtype {entry.dtype!r}") from None
    crc = 0
    for part in parts.values():
        crc = zlib.crc32(part.tobytes(), crc)
    if crc != entry.crc32:
        raise corrupt(f"CRC-32 {crc:#010x} does not match the recorded {entry.crc32:#010x}")
    values = parts["values"]
    stored_dtypes: dict[str, np.dtype] = {"float16": np.dtype(np.float16), "int8": np.dtype(np.int8)}
    expected = stored_dtypes.get(entry.storage, dtype)
    # a gap stream holds the nonzeros plus at most one filler per 256 elements; a bitmask layout stores nnz values:
    # no stream inflates further than the declared shape and nonzero count allow
    slots = entry.nnz + entry.numel // MAX_GAP
    limit = f"shape {entry.shape} with {entry.nnz} nonzeros"
    if entry.values_codec != "none":
        if values.dtype != np.uint8 or values.ndim != 1:
            raise corrupt(f"entropy-coded values stored as {values.dtype}{list(values.shape)}, expected a uint8 vector")
        try:
            count = {"dense": entry.numel, "bitmask": entry.nnz}.get(entry.layout, slots)
            inflated = unpack(entry.values_codec, values.tobytes(), count * expected.itemsize, limit)
        except ValueError as exc:
            raise corrupt(f"values {exc}") from None
        if len(inflated) % expected.itemsize:
            raise corrupt(f"values stream of {len(inflated)} bytes is not a whole number of {expected} values")
        values = np.frombuffer(inflated, dtype=expected)
    if values.dtype != expected or values.ndim != 1 and entry.layout != "dense":
        raise corrupt(f"values stored as {values.dtype}{list(values.shape)}, expected a {expected} vector")
    if entry.layout == "dense":
        if values.size != entry.numel:
            raise corrupt(f"{values.size} values for shape {entry.shape}")
        return None, values.reshape(-1).copy()  # writable, not a view of the file buffer
    else:
        index = parts["index"]
        if index.dtype != np.uint8:
            raise corrupt(f"index stored as {index.dtype}, expected uint8")
        if entry.index_codec != "none":
            cap = -(-entry.numel // 8) if entry.layout == "bitmask" else slots  # a bitmask is ceil(numel / 8) bytes
            try:
                index = np.frombuffer(unpack(entry.index_codec, index.tobytes(), cap, limit), dtype=np.uint8)
            except ValueError as exc:
                raise corrupt(f"index {exc}") from None
        if entry.layout == "bitmask":
            if index.size != -(-entry.numel // 8):
                raise corrupt(f"bitmask of {index.size} bytes for {entry.numel} elements")
            positions = _bitmask_positions(index, entry.numel)
        elif entry.layout == "gaps":
            if index.size > entry.numel:
                raise corrupt(f"gap stream of {index.size} bytes for {entry.numel} elements")
            positions = np.cumsum(index.astype(np.int64) + 1) - 1
        else:
            raise corrupt(f"unknown layout {entry.layout!r}")
        if positions.size != values.size or (positions.size and positions[-1] >= entry.numel):
            raise corrupt(f"{values.size} values for {positions.size} positions in {entry.numel} elements")
        if entry.storage == "int8":
            scale = parts.get("scale")
            if scale is None or scale.size != entry.shape[0]:
                raise corrupt("missing or misshapen per-channel scales")
        return positions, values.copy()


def _bitmask_positions(index: np.ndarray, numel: int, chunk: int = 1 << 20) -> np.ndarray:
    """Flat positions of the set bits of a little-endian bitmask, unpacked ``chunk`` bytes at a time
    (so the unpacked mask never takes a byte per element of the whole tensor)."""
    found = []
    for start in range(0, index.size, chunk):
        bits = np.unpackbits(index[start : start + chunk], count=min(numel - start * 8, chunk * 8), bitorder="little")
        found.append(np.flatnonzero(bits) + start * 8)
    return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)


def _decode(path: Path, name: str, entry: TensorEntry, parts: Mapping[str, np.ndarray]) -> np.ndarray:
    positions, values = _nonzeros(path, name, entry, parts)
    dtype = np.dtype(entry.dtype)
    if positions is None:
        flat = values
    else:
        flat = np.zeros(entry.numel, dtype=values.dtype)
        flat[positions] = values
    if entry.storage == "int8":
        scale = parts.get("scale")
        if scale is None or scale.size != entry.shape[0]:
            raise CorruptFileError(f"{path}: tensor {name!r} is corrupted (missing or misshapen per-channel scales)")
        rows = flat.reshape(entry.shape[0], -1).astype(np.float32) * scale.astype(np.float32)[:, None]
        return rows.astype(dtype).reshape(entry.shape)
    return flat.astype(dtype, copy=False).reshape(entry.shape)


def _read_container(path: Path) -> tuple[bytes, dict[str, Any]]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"compact file {path} does not exist") from None
    if len(data) < 8:
        raise CorruptFileError(f"{path} is {len(data)} bytes, too short to be a prunekit compact file (truncated?)")
    header_len = int.from_bytes(data[:8], "little")
    if 8 + header_len > len(data):
        raise CorruptFileError(
            f"{path} is truncated: its header needs {8 + header_len} bytes but the file has {len(data)}; copy or export it again"
        )
    try:
        header = json.loads(data[8 : 8 + header_len])
        text = header["__metadata__"][_META_KEY]
        meta = json.loads(text)
    except (ValueError, KeyError, TypeError):
        raise CorruptFileError(
            f"{path} has no readable prunekit metadata: it is corrupted or was not written by prunekit's save_compressed"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CorruptFileError(f"{path} is not a prunekit compact file (format {found!r})")
    version = meta.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise CorruptFileError(f"{path} has an invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise CorruptFileError(
            f"{path} uses compact format version {version} (written by prunekit "
            f"{meta.get('prunekit_version', '?')}), newer than version {FORMAT_VERSION} that this prunekit reads; "
            "upgrade prunekit: pip install -U prunekit"
        )
    if header["__metadata__"].get(_META_CRC_KEY) != str(zlib.crc32(text.encode())):
        raise CorruptFileError(
            f"{path}: the prunekit metadata fails its CRC-32 check (corrupted header); re-export the file with save_compressed"
        )
    if version >= 3:
        meta.update(read_table(path, data, header, 8 + header_len, meta.get("table")))
    return data, meta


def _header_from_json(path: Path, meta: Mapping[str, Any]) -> CompactHeader:
    for key in ("tensors", "prunekit_version", "framework", "dtype"):
        if key not in meta:
            raise CorruptFileError(f"{path}: the prunekit metadata lacks the field {key!r}")
    if not isinstance(meta["tensors"], Mapping):
        raise CorruptFileError(f"{path}: metadata field 'tensors' should be a mapping, got {type(meta['tensors']).__name__}")
    if meta.get("plan") is not None and not isinstance(meta["plan"], Mapping):
        raise CorruptFileError(f"{path}: metadata field 'plan' should be a mapping, got {type(meta['plan']).__name__}")
    if meta.get("extra") is not None and not isinstance(meta["extra"], Mapping):
        raise CorruptFileError(f"{path}: metadata field 'extra' should be a mapping, got {type(meta['extra']).__name__}")
    tensors = {}
    for name, value in meta["tensors"].items():
        try:
            tensors[str(name)] = TensorEntry.from_json(value)
        except ValueError as exc:
            raise CorruptFileError(f"{path}: metadata of tensor {name!r}: {exc}") from None
    try:
        return CompactHeader(
            int(meta["format_version"]),
            str(meta["prunekit_version"]),
            str(meta["framework"]),
            str(meta["dtype"]),
            tensors,
            meta.get("plan"),
            dict(meta.get("extra") or {}),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CorruptFileError(f"{path} has malformed prunekit metadata ({type(exc).__name__}: {exc})") from None


# --------------------------------------------------------------------------- public API


def save_compact(
    arrays: Mapping[str, np.ndarray],
    path: str | os.PathLike,
    dtype: str = "fp32",
    *,
    framework: str = "numpy",
    plan: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    entropy: str = "auto",
) -> CompactHeader:
    """Write ``{name: array}`` as a compact sparse file (atomically) and return its header.

    ``dtype`` is ``"fp32"`` (exact), ``"fp16"`` or ``"int8"`` (per-channel scales; vectors in float16). ``plan`` is an
    optional JSON-serialisable structured-pruning plan stored in the header. ``entropy`` says how hard
    each stream's coding is searched: ``"fast"`` (zlib), ``"best"`` (zlib, three lzma models and the
    context-mixing coders: the smallest file, several times slower) or ``"auto"`` (best up to 64 MiB of tensors, fast above).

    Example::

        header = save_compact({"fc.weight": weights}, "model.safetensors", dtype="int8")
        header.tensors["fc.weight"].nnz
    """
    from safetensors.numpy import save as save_safetensors

    from prunekit import __version__

    if dtype not in STORAGE_DTYPES:
        raise ConfigError(f"dtype should be one of {', '.join(STORAGE_DTYPES)}, got {dtype!r}")
    for name, array in arrays.items():
        if not isinstance(array, np.ndarray):
            raise ConfigError(f"tensor {name!r} is a {type(array).__name__}, expected a numpy array")
    streams = StreamWriter(candidates(entropy, sum(array.nbytes for array in arrays.values())))
    entries: dict[str, TensorEntry] = {}
    references: dict[str, dict[str, list[int]]] = {}
    for name, array in arrays.items():
        entry, parts, coded_index = _encode(name, array, dtype, streams.codecs)
        entries[name] = entry
        references[name] = {
            part: streams.add_small(value)
            if part == "scale" or (entry.layout == "dense" and value.nbytes <= GROUP_BYTES)
            else streams.add(value.tobytes(), coded_index if part == "index" else _coded_values(entry, parts, streams.codecs))
            for part, value in parts.items()
        }
    data = streams.finish()
    header = CompactHeader(
        FORMAT_VERSION, __version__, framework, dtype, entries, dict(plan) if plan is not None else None, dict(extra or {})
    )
    table = {"streams": streams.table, "tensors": {n: {**e.to_json(), "parts": references[n]} for n, e in entries.items()}}
    table_text = json.dumps(table, separators=(",", ":")).encode()
    codec, coded_table = pack(table_text, ("zlib", "lzma"))
    summary = header.to_json()
    del summary["tensors"]
    if summary["plan"] is None:
        del summary["plan"]
    if not summary["extra"]:
        del summary["extra"]
    summary["table"] = [codec, len(coded_table), len(table_text), zlib.crc32(coded_table)]
    try:
        meta = json.dumps(summary, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"the plan or extra metadata is not JSON-serialisable: {exc}") from None
    metadata = {_META_KEY: meta, _META_CRC_KEY: str(zlib.crc32(meta.encode()))}
    blobs = {TABLE_TENSOR: np.frombuffer(coded_table, dtype=np.uint8), DATA_TENSOR: np.frombuffer(data, dtype=np.uint8)}
    atomic_write_bytes(path, save_safetensors(blobs, metadata=metadata))
    return header


def is_compact_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a safetensors file carrying prunekit compact metadata (nothing is verified).

    Example::

        is_compact_file("model.safetensors")  # False for a plain safetensors state_dict
    """
    try:
        with open(path, "rb") as handle:
            header_len = int.from_bytes(handle.read(8), "little")
            if header_len > 100 * 2**20:
                return False
            header = json.loads(handle.read(header_len))
        return _META_KEY in header.get("__metadata__", {})
    except (OSError, ValueError, AttributeError, TypeError):
        return False


def read_compact_header(path: str | os.PathLike) -> CompactHeader:
    """Read and check only the header of a compact file (fast: tensors are not decoded).

    Example::

        read_compact_header("model.safetensors").plan
    """
    path = Path(path)
    _, meta = _read_container(path)
    return _header_from_json(path, meta)


def load_compact(path: str | os.PathLike, *, max_bytes: int = MAX_DECODED_BYTES) -> tuple[dict[str, np.ndarray], CompactHeader]:
    """Read a compact file back into ``{name: array}`` (exact for fp32) plus its header.

    Raises :class:`~prunekit.errors.CorruptFileError` naming the file and tensor when the file
    is truncated, corrupted or from a newer format version; nothing is returned half-decoded.
    Declared shapes are checked before anything is decoded: a file declaring more than
    ``max_bytes`` of tensors is refused, and no index stream inflates past what its shape allows.

    Example::

        arrays, header = load_compact("model.safetensors")
    """
    stored, header = _stored_parts(Path(path), max_bytes)
    arrays = {name: _decode(Path(path), name, header.tensors[name], parts) for name, parts in stored.items()}
    return arrays, header


@dataclass(frozen=True)
class SparseArray:
    """A tensor's nonzeros as the compact file stores them, never expanded: flat ``positions`` (sorted,
    row-major), ``values`` in their stored dtype (the tensor's own, float16 or int8) and, for int8,
    one float32 ``scale`` per index of axis 0."""

    shape: tuple[int, ...]
    dtype: str
    positions: np.ndarray
    values: np.ndarray
    scale: np.ndarray | None = None

    def to_dense(self) -> np.ndarray:
        """The dense array (as :func:`load_compact` returns it)."""
        flat = np.zeros(math.prod(self.shape), dtype=np.float32 if self.scale is not None else self.values.dtype)
        flat[self.positions] = self.values
        if self.scale is not None:
            flat = (flat.reshape(self.shape[0], -1) * self.scale[:, None]).reshape(-1)
        return flat.astype(self.dtype, copy=False).reshape(self.shape)


def load_compact_sparse(
    path: str | os.PathLike, *, max_bytes: int = MAX_DECODED_BYTES
) -> tuple[dict[str, np.ndarray | SparseArray], CompactHeader]:
    """Like :func:`load_compact`, but tensors stored sparse come back as :class:`SparseArray` (their nonzeros
    only), so a sparse runtime can be fed without ever materialising the dense tensor.

    Example::

        arrays, header = load_compact_sparse("model.safetensors")
        arrays["fc1.weight"].positions.size == header.tensors["fc1.weight"].nnz
    """
    path = Path(path)
    stored, header = _stored_parts(path, max_bytes)
    arrays: dict[str, np.ndarray | SparseArray] = {}
    for name, parts in stored.items():
        entry = header.tensors[name]
        if entry.layout == "dense":
            arrays[name] = _decode(path, name, entry, parts)
            continue
        positions, values = _nonzeros(path, name, entry, parts)
        assert positions is not None
        scale = parts["scale"].astype(np.float32) if entry.storage == "int8" else None
        arrays[name] = SparseArray(entry.shape, entry.dtype, positions, values, scale)
    return arrays, header


def _stored_parts(path: Path, max_bytes: int) -> tuple[dict[str, dict[str, np.ndarray]], CompactHeader]:
    """The checked header and each tensor's stored parts (values, index, scale), not yet decoded."""
    from safetensors import SafetensorError
    from safetensors.numpy import load as load_safetensors

    data, meta = _read_container(path)
    header = _header_from_json(path, meta)
    declared = sum(e.numel * np.dtype(e.dtype).itemsize for e in header.tensors.values())
    if declared > max_bytes:
        raise CorruptFileError(
            f"{path} declares {declared:,} bytes of tensors, over the {max_bytes:,} allowed; if the file is trusted "
            "and really that large, pass a larger max_bytes to load_compact"
        )
    if header.format_version >= 3:
        return inflate_streams(path, meta, header.tensors), header
    try:
        stored = load_safetensors(data)
    except (SafetensorError, ValueError, TypeError) as exc:
        raise CorruptFileError(f"{path} is truncated or corrupted: {exc}") from None
    tensors: dict[str, dict[str, np.ndarray]] = {}
    for name, entry in header.tensors.items():
        needed = ["values"] + ([] if entry.layout == "dense" else ["index"]) + (["scale"] if entry.storage == "int8" else [])
        missing = [part for part in needed if f"{name}:{part}" not in stored]
        if missing:
            raise CorruptFileError(f"{path}: tensor {name!r} lacks its stored part(s) {', '.join(missing)}")
        tensors[name] = {part: stored[f"{name}:{part}"] for part in needed}
    return tensors, header
