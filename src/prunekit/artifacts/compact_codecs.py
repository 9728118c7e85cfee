"""The entropy codecs of the compact file: zlib and raw LZMA2 with tuned literal contexts, bounded decoding.

A codec is named by a short string stored in the file: ``"none"``, ``"zlib"``, ``"lzma"`` (LZMA2's
defaults, lc=3 lp=0 pb=2, as format version 2 wrote it) or ``"lzmaCPB"`` with three digits giving
lc, lp and pb (``"lzma000"``: an order-0 literal model, which suits int8 values and bitmasks;
``"lzma020"``: the literal model keyed by the byte's position in a 4-byte word, which suits float32
arrays), or, from format version 4, a context-mixing coder (:mod:`~prunekit.artifacts.cm_codec`):
``"cmmR"`` for a bitmask of rows of R bits, ``"cmbW"`` for bytes in words of W. Decoding is bounded by a cap that the caller derives from the declared shapes, so a
crafted stream never inflates past what the file may hold.
"""

from __future__ import annotations

import lzma
import re
import zlib

import numpy as np

from prunekit.artifacts import cm_codec
from prunekit.artifacts.cm_codec import cm_decode, cm_encode, is_cm_codec
from prunekit.errors import ConfigError

_LZMA_MAX_DICT = 1 << 23  # 8 MiB: bounds the lzma decoder's memory whatever a file declares
_LZMA_NAME = re.compile(r"lzma([0-4])([0-4])([0-4])")
#: How hard ``save_compressed`` searches for the smallest coding of each stream.
ENTROPY_MODES = ("auto", "fast", "best")
#: ``"auto"`` uses ``"best"`` up to this many bytes of input tensors and ``"fast"`` above.
AUTO_BEST_BYTES = 64 * 2**20
#: Streams longer than this choose their codec on a sample of this many bytes.
SAMPLE_BYTES = 1 << 16
#: ``"cmm"`` stands for the bitmask coder of the stream's row length (tried on bitmasks only).
_CANDIDATES = {"fast": ("zlib",), "best": ("zlib", "lzma000", "lzma020", "lzma400", "cmb1", "cmb4", "cmm")}


def candidates(entropy: str, total_bytes: int) -> tuple[str, ...]:
    """The codecs tried on every stream for an ``entropy`` mode: ``"fast"`` zlib only (seconds per GiB),
    ``"best"`` zlib, three lzma models and the context-mixing coders (the smallest file, several times
    slower), ``"auto"`` best up to :data:`AUTO_BEST_BYTES` of tensors and fast above."""
    if entropy not in ENTROPY_MODES:
        raise ConfigError(f"entropy should be one of {', '.join(ENTROPY_MODES)}, got {entropy!r}")
    if entropy == "auto":
        entropy = "best" if total_bytes <= AUTO_BEST_BYTES else "fast"
    return _CANDIDATES[entropy]


def is_codec(name: object) -> bool:
    """Whether ``name`` is a codec this prunekit decodes."""
    if name in ("none", "zlib", "lzma") or (isinstance(name, str) and is_cm_codec(name)):
        return True
    match = _LZMA_NAME.fullmatch(name) if isinstance(name, str) else None
    return match is not None and int(match.group(1)) + int(match.group(2)) <= 4  # LZMA2 allows lc + lp <= 4


def lzma_filters(codec: str, size: int) -> list[dict[str, int]]:
    """Raw LZMA2 (no xz container: ~60 bytes less per stream) with a dictionary no larger than ``size`` needs:
    the writer sizes it to the stream, the reader to the stream's cap (never smaller), so neither the writer's
    choice nor a crafted file makes the decoder allocate more than the declared shape allows (4 KiB to 8 MiB)."""
    options = {"id": lzma.FILTER_LZMA2, "preset": 6, "dict_size": min(max(1 << (size - 1).bit_length(), 4096), _LZMA_MAX_DICT)}
    match = _LZMA_NAME.fullmatch(codec)
    if match:
        options.update(lc=int(match.group(1)), lp=int(match.group(2)), pb=int(match.group(3)))
    return [options]


def pack(data: bytes, codecs: tuple[str, ...], row: int | None = None) -> tuple[str, bytes]:
    """The smallest of ``data`` as it is and coded with each of ``codecs``: (codec, stored bytes).
    ``row`` says that ``data`` is a bitmask of rows of ``row`` bits (``"cmm"`` is tried only then).
    A stream over :data:`SAMPLE_BYTES` is coded whole only with the codec that wins on its first
    ``SAMPLE_BYTES`` (one full pass instead of one per codec). Without numba the context-mixing
    codecs are tried only on streams they code quickly in plain Python."""
    codecs = tuple(f"cmm{row}" if codec == "cmm" else codec for codec in codecs if codec != "cmm" or row)
    codecs = tuple(codec for codec in codecs if codec != cm_codec.SIDE_CODEC)  # it needs contexts: pack_values
    if not cm_codec.affordable(len(data)):
        codecs = tuple(codec for codec in codecs if not is_cm_codec(codec))
    if len(data) > SAMPLE_BYTES and len(codecs) > 1:
        winner = pack(data[:SAMPLE_BYTES], codecs)[0]
        codecs = () if winner == "none" else (winner,)
    best = ("none", data)
    for codec in codecs:
        if codec == "zlib":
            packed: bytes | None = zlib.compress(data, 6)
        elif is_cm_codec(codec):
            packed = cm_encode(codec, data)
        else:
            packed = lzma.compress(data, format=lzma.FORMAT_RAW, filters=lzma_filters(codec, len(data)))
        if packed is not None and len(packed) < len(best[1]):
            best = (codec, packed)
    return best


def unpack(codec: str, data: bytes, cap: int, limit: str, side: np.ndarray | None = None) -> bytes:
    """Inflate ``data`` to at most ``cap`` bytes (bounded, so a crafted stream never balloons in memory);
    ``ValueError`` naming ``limit`` (what sets the cap) when it is malformed, truncated or would inflate past it.
    ``side``: each value's context, for the codec that needs it (``cm_codec.SIDE_CODEC``)."""
    if codec == "none":
        return data
    if is_cm_codec(codec):
        try:
            return cm_decode(codec, data, cap, side)
        except ValueError as exc:
            raise ValueError(f"context-mixing stream {exc} ({limit} sets the cap)") from None
    family = "zlib" if codec == "zlib" else "lzma"
    try:
        if codec == "zlib":
            inflater = zlib.decompressobj()
            out = inflater.decompress(data, cap)
            done, rest = inflater.eof, bool(inflater.unconsumed_tail or inflater.unused_data)
        else:
            unlzma = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=lzma_filters(codec, cap))
            out = unlzma.decompress(data, cap)
            done, rest = unlzma.eof, bool(unlzma.unused_data)
    except (zlib.error, lzma.LZMAError) as exc:
        raise ValueError(f"{family} stream does not inflate: {exc}") from None
    if rest or (not done and len(out) >= cap):
        raise ValueError(f"{family} stream inflates past the {cap} bytes that {limit} allows")
    if not done:
        raise ValueError(f"{family} stream is truncated")
    return out


def pack_values(data: bytes, codecs: tuple[str, ...], side: np.ndarray) -> tuple[str, bytes]:
    """Like :func:`pack` for a tensor's int8 values, also trying ``"cms1"`` with each value's row context
    ``side`` (when ``codecs`` hold the context-mixing coders)."""
    best = pack(data, codecs)
    if "cmb1" in codecs and cm_codec.affordable(len(data)):
        coded = cm_encode(cm_codec.SIDE_CODEC, data, side)
        if coded is not None and len(coded) < len(best[1]):
            best = (cm_codec.SIDE_CODEC, coded)
    return best
