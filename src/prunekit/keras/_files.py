"""Files for the Keras backend: an atomic target that keeps the suffix Keras checks, and gzip sizes."""

from __future__ import annotations

import contextlib
import gzip
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_target(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path with ``path``'s suffix (Keras checks suffixes); it replaces ``path`` on success.

    Example::

        with atomic_target("model.keras") as tmp:
            model.save(tmp)
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(target.suffixes[-2:]) if target.name.endswith(".weights.h5") else target.suffix
    fd, name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".tmp{suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    tmp.unlink()  # writers such as Keras refuse to overwrite without asking
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def gzip_size(data: bytes) -> int:
    """Bytes of ``data`` after gzip at level 9 (a fixed mtime, so the figure is reproducible)."""
    return len(gzip.compress(data, compresslevel=9, mtime=0))
