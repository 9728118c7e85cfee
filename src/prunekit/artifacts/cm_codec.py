"""The context-mixing codecs of the compact file: ``"cmmR"`` for bitmasks of rows of R bits, ``"cmbW"`` for bytes,
``"cms1"`` for a tensor's int8 values keyed by their row's scale.

All are adaptive binary arithmetic coders (:mod:`~prunekit.artifacts.cm_sources`) whose contexts order-0
coders cannot use: a bitmask bit is predicted from its row's and its column's running density and its
neighbours; a byte from the bytes before it in its lane of ``W``-byte words, and for ``"cms1"`` also from
its row's scale (:func:`row_contexts`: magnitude pruning keeps the weights above one global threshold,
so the row's scale sets where its int8 magnitudes start and how they spread). A stored stream is the
varint of its raw length followed by the coded bytes. The kernels are compiled by numba when it is
installed (once per process, cached on disk) and run as plain Python otherwise (the same integer
arithmetic, so files are identical either way, only slower).
"""

from __future__ import annotations

import functools
import importlib.util
import re
from typing import Any

import numpy as np

from prunekit.artifacts.cm_sources import CODER_HELPERS, HELPER_OPTIONS, kernel_sources, rate_table, squash_table, stretch_table

HAVE_NUMBA = importlib.util.find_spec("numba") is not None
CM_NAME = re.compile(r"cm(m|b|s)([1-9][0-9]{0,12})")
SIDE_CODEC = "cms1"  # the codec that needs each value's row context to decode
#: Without numba the writer tries these codecs only on streams up to this size (plain Python codes ~50 KiB/s).
PLAIN_PYTHON_BYTES = 1 << 16


@functools.cache
def _tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    squash = squash_table()
    return squash, stretch_table(squash), rate_table()


@functools.cache
def _kernels(compiled: bool) -> dict[str, Any]:
    """The kernels, compiled by numba when ``compiled`` (once per process, cached on disk)."""
    if not compiled:
        return kernel_sources()
    import numba
    from numba.extending import register_jitable

    for helper in CODER_HELPERS:
        register_jitable(**HELPER_OPTIONS)(helper)  # the kernels call them by name; numba compiles them into each
    return {name: numba.njit(cache=True, nogil=True)(fn) for name, fn in kernel_sources().items()}


def _run(kind: str, side: np.ndarray | None, *args: Any) -> int:
    if kind == "m":
        return int(_kernels(HAVE_NUMBA)["code_mask"](*args, *_tables()))
    known = np.zeros(0, dtype=np.int64) if side is None else side
    return int(_kernels(HAVE_NUMBA)["code_bytes"](*args, *_tables(), known))


def row_contexts(scale: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Each value's context for ``"cms1"``: its row's float32 ``scale`` in half octaves from the median row's
    (0..15), repeated ``counts[row]`` times. Read from the scale's bits, so every machine agrees exactly."""
    bits = np.ascontiguousarray(scale, dtype=np.float32).view(np.uint32).astype(np.int64)
    half_octaves = 2 * ((bits >> 23) & 255) + ((bits >> 22) & 1)
    middle = int(np.median(half_octaves)) if half_octaves.size else 0
    return np.repeat(np.clip(half_octaves - middle + 8, 0, 15), counts)


def affordable(size: int) -> bool:
    """Whether coding ``size`` bytes is quick: always with numba, up to :data:`PLAIN_PYTHON_BYTES` without it
    (reading never depends on this: every file decodes either way)."""
    return HAVE_NUMBA or size <= PLAIN_PYTHON_BYTES


def is_cm_codec(name: str) -> bool:
    """Whether ``name`` is a context-mixing codec (``cmbW`` with W 1, 2 or 4; ``cmmR`` with any row length; ``cms1``)."""
    match = CM_NAME.fullmatch(name)
    return match is not None and (
        match.group(1) == "m" or name == SIDE_CODEC or name[2] == "b" and int(match.group(2)) in (1, 2, 4)
    )


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append((value & 127) | (128 if value > 127 else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _read_varint(data: bytes) -> tuple[int, int]:
    value = 0
    for i, byte in enumerate(data[:10]):
        value |= (byte & 127) << (7 * i)
        if byte < 128:
            return value, i + 1
    raise ValueError("its length prefix is malformed")


def cm_encode(codec: str, data: bytes, side: np.ndarray | None = None) -> bytes | None:
    """``data`` coded with the context-mixing ``codec``; None when it would not come out smaller than ``data``.
    ``side`` (``"cms1"`` only) holds each byte's context, from :func:`row_contexts`."""
    match = CM_NAME.fullmatch(codec)
    assert match is not None and is_cm_codec(codec), codec
    assert (side is not None and side.size == len(data)) == (codec == SIDE_CODEC), codec
    kind, parameter = match.group(1), int(match.group(2))
    head = _varint(len(data))
    out = np.zeros(max(0, len(data) - len(head)), dtype=np.uint8)
    source = np.frombuffer(data, dtype=np.uint8)
    size = _run(kind, side, source, len(data) * 8 if kind == "m" else len(data), parameter, out, 0)
    return None if size < 0 else head + out[:size].tobytes()


def cm_decode(codec: str, data: bytes, cap: int, side: np.ndarray | None = None) -> bytes:
    """Decode a stream of ``codec`` to at most ``cap`` bytes (``side``: as given to :func:`cm_encode`); ``ValueError``
    when its declared length is over ``cap``, differs from the contexts given, or the stream is shorter or longer
    than its coded symbols take (truncated or padded)."""
    match = CM_NAME.fullmatch(codec)
    if match is None or not is_cm_codec(codec):
        raise ValueError(f"unknown context-mixing codec {codec!r}")
    kind, parameter = match.group(1), int(match.group(2))
    size, start = _read_varint(data)
    if size > cap:
        raise ValueError(f"declares {size} bytes, more than the {cap} allowed")
    if codec == SIDE_CODEC and (side is None or side.size != size):
        raise ValueError(f"declares {size} values, but its tensor has {0 if side is None else side.size} nonzeros")
    body = np.frombuffer(data, dtype=np.uint8)[start:]
    out = np.zeros(size, dtype=np.uint8)
    read = _run(kind, side if codec == SIDE_CODEC else None, body, size * 8 if kind == "m" else size, parameter, out, 1)
    if read != body.size + 3:  # the decoder reads 3 bytes more than the encoder wrote (its 4-byte window)
        raise ValueError(
            f"does not end where its coded bits do (truncated, padded or corrupted: {body.size} bytes, {read - 3} coded)"
        )
    return out.tobytes()
