"""Write files atomically: into a temporary file in the target's directory, then ``os.replace``.

A reader never sees a half-written file, and a failed write leaves the old file (or nothing).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary path next to ``path``; on success it replaces ``path``, on error it is removed.

    The temporary name ends with ``path``'s suffixes (writers such as Keras check them) and does not
    exist yet (writers such as Keras refuse to overwrite without asking).

    Example::

        with atomic_path("model.onnx") as tmp:
            onnx.save(model, tmp)
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(target.suffixes[-2:]) if target.name.endswith(".weights.h5") else target.suffix
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".tmp{suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()
    mode = target.stat().st_mode & 0o777 if target.exists() else 0o644
    try:
        yield tmp
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (flushed to disk before the rename).

    Example::

        atomic_write_bytes("model.safetensors", payload)
    """
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically.

    Example::

        atomic_write_text("results.json", json.dumps(results))
    """
    atomic_write_bytes(path, text.encode("utf-8"))
