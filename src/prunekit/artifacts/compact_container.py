"""The container of compact format versions 3 and 4 (4 adds codecs only): one data blob of coded streams and a coded per-tensor table.

The safetensors file holds two uint8 tensors: ``prunekit:data``, the coded streams one after the other,
and ``prunekit:table``, the coded JSON table listing each stream (``[codec, stored bytes, raw bytes,
CRC-32 of the stored bytes]``) and each tensor (its entry plus, per part, ``[stream, offset, bytes]``
into the inflated stream). Small dense parts (biases, norm statistics, per-channel scales) share one
stream: one codec warm-up for all of them. Reading checks every reference against the declared
shapes and every stream against its CRC-32 before anything is inflated, and inflates no stream past
the bytes its parts take; each tensor's own CRC-32 (over its inflated parts) is checked afterwards.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from prunekit.artifacts.cm_codec import SIDE_CODEC, row_contexts
from prunekit.artifacts.compact_codecs import is_codec, pack, unpack
from prunekit.errors import CorruptFileError

MAX_GAP = 256  # one index byte encodes a gap of 1..256 elements
TABLE_TENSOR, DATA_TENSOR = "prunekit:table", "prunekit:data"  # the two safetensors tensors of a version 3 file
GROUP_BYTES = 1 << 16  # dense parts up to this size share one stream (one codec warm-up for all of them)
_MAX_TABLE_BYTES = 1 << 28  # a table (a few hundred bytes per tensor) never needs more


class _Entry(Protocol):
    """What the container reads of a ``compact.TensorEntry`` (a protocol: the entry module imports this one)."""

    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def dtype(self) -> str: ...
    @property
    def storage(self) -> str: ...
    @property
    def layout(self) -> str: ...
    @property
    def nnz(self) -> int: ...
    @property
    def numel(self) -> int: ...


def is_int(value: Any) -> bool:
    """Whether a JSON value is an integer (``True`` is not one, though Python's ``bool`` is an ``int``)."""
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class StreamWriter:
    """The data blob being built: coded streams, and the small dense parts waiting to share one stream."""

    codecs: tuple[str, ...]
    table: list[list[Any]] = field(default_factory=list)  # [codec, stored bytes, raw bytes, CRC-32 of the stored bytes]
    blobs: list[bytes] = field(default_factory=list)
    small: list[tuple[int, list[int], bytes]] = field(default_factory=list)  # (item size, its reference, raw bytes)

    def add(self, raw: bytes, coded: tuple[str, bytes] | None = None) -> list[int]:
        """Code ``raw`` as a stream of its own; its reference ``[stream, offset, bytes]``."""
        codec, stored = coded or pack(raw, self.codecs)
        self.table.append([codec, len(stored), len(raw), zlib.crc32(stored)])
        self.blobs.append(stored)
        return [len(self.table) - 1, 0, len(raw)]

    def add_small(self, part: np.ndarray) -> list[int]:
        """Queue a small part for the shared stream; its reference is filled in by :meth:`finish`."""
        reference = [0, 0, part.nbytes]
        self.small.append((part.dtype.itemsize, reference, part.tobytes()))
        return reference

    def finish(self) -> bytes:
        """Code the shared stream (wider items first, so every item stays aligned to its size) and join all."""
        if self.small:
            self.small.sort(key=lambda item: -item[0])
            offset, stream = 0, len(self.table)
            for _, reference, raw in self.small:
                reference[0], reference[1] = stream, offset
                offset += len(raw)
            self.add(b"".join(raw for _, _, raw in self.small))
        return b"".join(self.blobs)


def _blob(path: Path, data: bytes, header: Mapping[str, Any], base: int, name: str) -> bytes:
    """The bytes of one uint8 safetensors tensor of a version 3 file, located from the container's own header."""
    info = header.get(name)
    offsets = info.get("data_offsets") if isinstance(info, Mapping) else None
    if (
        not isinstance(info, Mapping)
        or info.get("dtype") != "U8"
        or not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(is_int(o) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1] <= len(data) - base
    ):
        raise CorruptFileError(f"{path}: the container entry {name!r} is missing or malformed (truncated or corrupted file)")
    return data[base + offsets[0] : base + offsets[1]]


def _stream_info(value: Any) -> tuple[str, int, int, int]:
    """One stream's ``[codec, stored bytes, raw bytes, CRC-32]``; ``ValueError`` when malformed."""
    if not (isinstance(value, list) and len(value) == 4 and is_codec(value[0]) and all(is_int(v) and v >= 0 for v in value[1:])):
        raise ValueError(f"should be [codec, stored bytes, raw bytes, crc], got {value!r}"[:200])
    return value[0], value[1], value[2], value[3]


def read_table(path: Path, data: bytes, header: Mapping[str, Any], base: int, table: Any) -> dict[str, Any]:
    """The per-tensor table of a version 3 file (its tensors and streams), checked against its CRC-32 before it
    is inflated, and inflated no further than the size the plain header declares."""
    try:
        codec, size, raw_size, crc = _stream_info(table)
    except ValueError as exc:
        raise CorruptFileError(f"{path}: metadata field 'table' {exc}") from None
    stored = _blob(path, data, header, base, TABLE_TENSOR)
    if len(stored) != size or zlib.crc32(stored) != crc:
        raise CorruptFileError(
            f"{path}: the tensor table fails its CRC-32 check (corrupted file); re-export it with save_compressed"
        )
    try:
        if raw_size > _MAX_TABLE_BYTES:
            raise ValueError(f"declares {raw_size:,} bytes, over the {_MAX_TABLE_BYTES:,} a table may take")
        text = unpack(codec, stored, raw_size, "the header")
        content = json.loads(text) if len(text) == raw_size else None
    except ValueError as exc:
        raise CorruptFileError(f"{path}: the tensor table is corrupted ({exc})") from None
    if not isinstance(content, dict) or not isinstance(content.get("streams"), list):
        raise CorruptFileError(
            f"{path}: the tensor table is malformed (no 'streams' list); re-export the file with save_compressed"
        )
    return {
        "tensors": content.get("tensors"),
        "streams": content["streams"],
        "data": _blob(path, data, header, base, DATA_TENSOR),
    }


def _part_cap(entry: _Entry, part: str) -> tuple[np.dtype, int]:
    """The dtype a stored part holds and the most bytes its declared shape and nonzero count allow."""
    slots = entry.nnz + entry.numel // MAX_GAP  # a gap stream: the nonzeros plus one filler per 256 elements at most
    if part == "scale":
        return np.dtype(np.float32), entry.shape[0] * 4
    if part == "index":
        return np.dtype(np.uint8), -(-entry.numel // 8) if entry.layout == "bitmask" else slots
    dtype = np.dtype({"float16": "float16", "int8": "int8"}.get(entry.storage, entry.dtype))
    return dtype, {"dense": entry.numel, "bitmask": entry.nnz}.get(entry.layout, slots) * dtype.itemsize


def row_counts(shape: tuple[int, ...], bitmask: np.ndarray | None) -> np.ndarray:
    """The nonzeros in each row (index of axis 0) of a tensor of ``shape``: from its little-endian ``bitmask``,
    unpacked a few MiB at a time, or every element when it has none (a dense layout)."""
    rows = shape[0]
    length = math.prod(shape) // rows
    if bitmask is None:
        return np.full(rows, length, dtype=np.int64)
    counts = np.zeros(rows, dtype=np.int64)
    step = max(1, (1 << 23) // max(length, 1))
    for first in range(0, rows, step):
        last = min(rows, first + step)
        start, stop = first * length, last * length
        bits = np.unpackbits(bitmask[start // 8 : -(-stop // 8)], bitorder="little")[start % 8 : start % 8 + stop - start]
        counts[first:last] = bits.reshape(last - first, length).sum(axis=1)
    return counts


def _side(
    path: Path,
    index: int,
    owners: list[tuple[str, str]],
    entries: Mapping[str, _Entry],
    parts: Mapping[str, Any],
    inflated: list[bytes | None],
) -> np.ndarray:
    """The row contexts that the values stream ``index`` (coded with ``SIDE_CODEC``) needs, from its tensor's
    scale and bitmask; :class:`CorruptFileError` unless it holds exactly one int8 tensor's values."""
    name, part = owners[0] if len(owners) == 1 else ("", "")
    entry = entries.get(name)
    if part != "values" or entry is None or entry.storage != "int8" or entry.layout not in ("bitmask", "dense"):
        raise CorruptFileError(f"{path}: stream {index} is coded with {SIDE_CODEC} but does not hold one int8 tensor's values")
    found = {}
    for needed in ("scale", "index") if entry.layout == "bitmask" else ("scale",):
        stream, offset, size, dtype = parts[name][needed]
        raw = inflated[stream]
        if raw is None or size != {"scale": entry.shape[0] * 4, "index": -(-entry.numel // 8)}[needed]:
            raise CorruptFileError(f"{path}: tensor {name!r} is corrupted (its {needed} cannot key its values' stream {index})")
        found[needed] = np.frombuffer(raw[offset : offset + size], dtype=dtype)
    return row_contexts(found["scale"], row_counts(entry.shape, found.get("index")))


def inflate_streams(path: Path, meta: Mapping[str, Any], entries: Mapping[str, _Entry]) -> dict[str, dict[str, np.ndarray]]:
    """Each tensor's uncoded parts from a version 3 file. Every reference and stream size is checked against the
    declared shapes, and every stream against its CRC-32, before anything is inflated; no stream inflates
    further than the parts that reference it."""
    data: bytes = meta["data"]
    try:
        streams = [_stream_info(value) for value in meta["streams"]]
    except ValueError as exc:
        raise CorruptFileError(f"{path}: a stream of the tensor table {exc}") from None
    if sum(stream[1] for stream in streams) != len(data):
        raise CorruptFileError(
            f"{path} is truncated or corrupted: its streams take {sum(s[1] for s in streams):,} bytes, the file holds {len(data):,}"
        )
    users: list[list[str]] = [[] for _ in streams]  # which tensors each stream holds, for messages and size bounds
    owners: list[list[tuple[str, str]]] = [[] for _ in streams]  # (tensor, part) of each reference
    used = [0] * len(streams)
    references: dict[str, dict[str, tuple[int, int, int, np.dtype]]] = {}
    for name, entry in entries.items():
        needed = ["values"] + ([] if entry.layout == "dense" else ["index"]) + (["scale"] if entry.storage == "int8" else [])
        given = meta["tensors"][name].get("parts")
        references[name] = {}
        for part in needed:
            reference = given.get(part) if isinstance(given, Mapping) else None
            dtype, cap = _part_cap(entry, part)
            if not (isinstance(reference, list) and len(reference) == 3 and all(is_int(r) and r >= 0 for r in reference)):
                raise CorruptFileError(f"{path}: tensor {name!r} lacks a valid reference to its {part} (field 'parts')")
            stream, offset, size = reference
            if stream >= len(streams) or offset + size > streams[stream][2] or size > cap or size % dtype.itemsize:
                raise CorruptFileError(
                    f"{path}: tensor {name!r} is corrupted (its {part} reference {reference} does not fit its stream "
                    f"or the {cap} bytes that shape {entry.shape} with {entry.nnz} nonzeros allows)"
                )
            users[stream].append(name)
            owners[stream].append((name, part))
            used[stream] += size
            references[name][part] = (stream, offset, size, dtype)
    inflated: list[bytes | None] = []
    deferred = []  # streams whose codec needs their tensor's scale and mask: decoded after all others
    for index, (codec, _, raw_size, crc) in enumerate(streams):
        holders = list(dict.fromkeys(users[index]))
        names = ("tensors " if len(holders) > 1 else "tensor ") + (", ".join(map(repr, holders)) or "none")
        start = sum(stream[1] for stream in streams[:index])
        stored = data[start : start + streams[index][1]]
        if zlib.crc32(stored) != crc:
            raise CorruptFileError(
                f"{path}: {names} is corrupted (CRC-32 {zlib.crc32(stored):#010x} of its stream {index} does not "
                f"match the recorded {crc:#010x}); re-export the file with save_compressed"
            )
        if raw_size > used[index]:
            raise CorruptFileError(
                f"{path}: stream {index} ({names}) declares {raw_size} bytes, more than its tensors use ({used[index]})"
            )
        inflated.append(None)
        if codec == SIDE_CODEC:
            deferred.append((index, stored, names))
        else:
            inflated[index] = _inflate(path, index, codec, stored, raw_size, names, None)
    for index, stored, names in deferred:
        side = _side(path, index, owners[index], entries, references, inflated)
        inflated[index] = _inflate(path, index, SIDE_CODEC, stored, streams[index][2], names, side)
    return {
        name: {part: np.frombuffer((inflated[s] or b"")[o : o + n], dtype=dtype) for part, (s, o, n, dtype) in parts.items()}
        for name, parts in references.items()
    }


def _inflate(path: Path, index: int, codec: str, stored: bytes, raw_size: int, names: str, side: np.ndarray | None) -> bytes:
    """One stream inflated to exactly ``raw_size`` bytes; :class:`CorruptFileError` naming its tensors otherwise."""
    try:
        raw = unpack(codec, stored, raw_size, f"the declared size of {names}", side)
    except ValueError as exc:
        raise CorruptFileError(f"{path}: {names} is corrupted (stream {index}: {exc})") from None
    if len(raw) != raw_size:
        raise CorruptFileError(f"{path}: {names} is corrupted (stream {index} inflates to {len(raw)} of its {raw_size} bytes)")
    return raw
