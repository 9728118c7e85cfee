"""The gzip-compressed size that prunekit reports beside every raw size (as TF MOT does)."""

from __future__ import annotations

import gzip
import os
import zlib

_CHUNK = 1 << 20
_GZIP_WBITS = 31  # zlib's gzip container: the same header, deflate stream and trailer as gzip.compress


def gzip_size(data: bytes) -> int:
    """Bytes of ``data`` after gzip at level 9 (a fixed mtime, so the figure is reproducible).

    Example::

        gzip_size(bytes(1000))  # a few dozen bytes
    """
    return len(gzip.compress(data, compresslevel=9, mtime=0))


def gzip_file_size(path: str | os.PathLike[str]) -> int:
    """:func:`gzip_size` of a file's bytes, read in 1 MiB chunks (a model file over 2 GiB never sits in memory).

    Example::

        gzip_file_size("model.onnx.data")  # == gzip_size(Path("model.onnx.data").read_bytes())
    """
    compressor = zlib.compressobj(9, zlib.DEFLATED, _GZIP_WBITS)
    total = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            total += len(compressor.compress(chunk))
    return total + len(compressor.flush())
