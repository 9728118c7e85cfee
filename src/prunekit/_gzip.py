"""The gzip-compressed size that prunekit reports beside every raw size (as TF MOT does)."""

from __future__ import annotations

import gzip


def gzip_size(data: bytes) -> int:
    """Bytes of ``data`` after gzip at level 9 (a fixed mtime, so the figure is reproducible).

    Example::

        gzip_size(bytes(1000))  # a few dozen bytes
    """
    return len(gzip.compress(data, compresslevel=9, mtime=0))
