"""Write files atomically: into a temporary file in the target's directory, then ``os.replace``.

A reader never sees a half-written file, and a failed write leaves the old file (or nothing).
Temporary names are hidden and carry the writer's process id, so a process killed mid-write
leaves debris that :func:`prunekit.core.debris.remove_stale_temps` can recognise and clean.
:func:`atomic_paths` does the same for a group of files that refer to each other by name (an
ONNX model and its external data file).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from prunekit.errors import ConfigError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary path next to ``path``; on success it replaces ``path``, on error it is removed.

    The temporary name ends with ``path``'s suffixes (writers such as Keras check them) and does not
    exist yet (writers such as Keras refuse to overwrite without asking).

    Example::

        with atomic_path("model.onnx") as tmp:
            onnx.save(model, tmp)
    """
    target = Path(path)
    _check_target(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(target.suffixes[-2:]) if target.name.endswith(".weights.h5") else target.suffix
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}.{os.getpid()}.", suffix=f".tmp{suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()
    mode = _mode(target)
    try:
        yield tmp
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _check_target(target: Path) -> None:
    """A clear error for a target that is a folder, or whose folder is a file (else ``os.replace`` fails cryptically)."""
    if target.is_dir():
        raise ConfigError(
            f"cannot write {target}: it is a directory; give a file path such as {target / ('model' + target.suffix)}"
        )
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"cannot write {target}: {parent} is a file, not a directory; choose another path")
            break


def _mode(target: Path) -> int:
    """The permissions a new version of ``target`` gets: those of the file it replaces, else the umask's default."""
    return target.stat().st_mode & 0o777 if target.exists() else new_file_mode()


def _umask() -> int:
    try:  # Linux shows it without changing it (os.umask is process-wide, so setting it races other threads)
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode(directory: bool = False) -> int:
    """The mode ``open()``/``mkdir()`` would give a new file (0o666) or folder (0o777) under the current umask.

    Temporary files and folders are created owner-only; a finished artifact gets this mode instead,
    like any other file the user writes.

    Example::

        os.chmod(tmp_dir, new_file_mode(directory=True))
    """
    return (0o777 if directory else 0o666) & ~_umask()


@contextlib.contextmanager
def atomic_paths(path: str | os.PathLike[str], *companions: str | os.PathLike[str]) -> Iterator[tuple[Path, ...]]:
    """Yield temporary paths named like ``path`` and its ``companions``; on success they replace those files as a group.

    The temporary files lie in a fresh hidden folder in ``path``'s directory, under the final
    names, so files that name each other (an ONNX model and its ``model.onnx.data``) stay valid
    when moved; the companions must share ``path``'s directory. ``path`` must be written; a
    companion that is not written is removed from the target too, so an old group never stays
    mixed with a new one. ``path`` (the file readers open) is moved away first and moved in last:
    a reader that finds it finds the companions written with it, and a swap cut short by a crash
    leaves no ``path`` rather than a mixed group (the old files wait in the hidden folder). On
    error the old files are put back and the temporary folder is removed.

    Example::

        with atomic_paths("model.onnx", "model.onnx.data") as (onnx_tmp, data_tmp):
            program.save(onnx_tmp, external_data=True)  # writes onnx_tmp and data_tmp
    """
    targets = [Path(path), *(Path(companion) for companion in companions)]
    if any(target.parent != targets[0].parent for target in targets) or len({t.name for t in targets}) < len(targets):
        raise ValueError(f"atomic_paths needs distinct file names in one directory, got {[str(t) for t in targets]}")
    for target in targets:
        _check_target(target)
    targets[0].parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{targets[0].name}.{os.getpid()}.", suffix=".tmp", dir=targets[0].parent))
    try:
        tmps = tuple(work / target.name for target in targets)
        yield tmps
        extra = sorted(p.name for p in work.iterdir() if p not in tmps)
        if extra:
            raise RuntimeError(
                f"the writer of {targets[0]} also wrote {extra}, which atomic_paths was not given; name every file of the group"
            )
        _swap(targets, tmps, work / ".replaced")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _swap(targets: list[Path], tmps: tuple[Path, ...], backup: Path) -> None:
    """Move the old ``targets`` into ``backup`` (the first one first), then ``tmps`` into place (the first one last)."""
    os.chmod(tmps[0], _mode(targets[0]))  # FileNotFoundError when the writer did not write the first file
    for target, tmp in zip(targets[1:], tmps[1:]):
        if tmp.exists():
            os.chmod(tmp, _mode(target))
    backup.mkdir()
    moved: list[Path] = []
    placed: list[Path] = []
    try:
        for target in targets:
            if target.exists():
                os.replace(target, backup / target.name)
                moved.append(target)
        for target, tmp in reversed(list(zip(targets, tmps))):
            if tmp.exists():
                os.replace(tmp, target)
                placed.append(target)
    except BaseException:
        for target in placed:
            target.unlink()
        for target in reversed(moved):
            os.replace(backup / target.name, target)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (flushed to disk before the rename).

    Example::

        atomic_write_bytes("model.safetensors", payload)
    """
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically.

    Example::

        atomic_write_text("results.json", json.dumps(results))
    """
    atomic_write_bytes(path, text.encode("utf-8"))
