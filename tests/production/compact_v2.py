"""A writer of compact format version 2 files (one safetensors tensor per coded part), as prunekit wrote
them before version 3, so that the tests can check that such files still read and are still checked."""

from __future__ import annotations

import json
import zlib

import numpy as np
from safetensors.numpy import save as save_st

from prunekit.artifacts.compact import _encode
from prunekit.artifacts.compact_codecs import pack


def crc(*parts: np.ndarray) -> int:
    value = 0
    for part in parts:
        value = zlib.crc32(part.tobytes(), value)
    return value


def write_meta(path, meta: dict, parts: dict) -> None:
    """Write a version 1 or 2 file from its metadata and stored parts (with a valid metadata CRC)."""
    text = json.dumps(meta)
    path.write_bytes(save_st(parts, metadata={"prunekit": text, "prunekit_crc32": str(zlib.crc32(text.encode()))}))


def write_v2(path, arrays: dict, dtype: str = "fp32") -> dict:
    """Write ``arrays`` as version 2 did (values and index each zlib, lzma or as they are); return its metadata."""
    tensors, stored = {}, {}
    for name, array in arrays.items():
        entry, raw, _ = _encode(name, array, dtype, ("zlib", "lzma"))
        value = entry.to_json()
        parts = {}
        for part, data in raw.items():
            codec, packed = pack(data.tobytes(), ("zlib", "lzma")) if part != "scale" else ("none", b"")
            parts[part] = data if codec == "none" else np.frombuffer(packed, np.uint8)
            if codec != "none":
                value["zi" if part == "index" else "zv"] = codec
        value["crc"] = crc(*parts.values())
        tensors[name] = value
        stored.update({f"{name}:{part}": data for part, data in parts.items()})
    meta = {"format": "prunekit.artifacts.compact", "format_version": 2, "prunekit_version": "0.2.0"}
    meta.update(framework="numpy", dtype=dtype, sparsity=0.9, tensors=tensors, plan=None, extra={})
    write_meta(path, meta, stored)
    return meta
