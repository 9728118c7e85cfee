"""Clean what interrupted runs leave behind: stale temporary files and outputs of an earlier run.

:mod:`prunekit.core.atomic` names its temporary files and folders ``.<name>.<pid>.<random>.tmp…``;
:func:`remove_stale_temps` removes those whose writer process is gone (a killed run), and for an
interrupted group swap (``atomic_paths``) first moves the old files it had set aside back into
place. :class:`RunOutputs` remembers which files a run wrote into its output folder (a small
manifest), so the next run in the same folder removes them first and never leaves a stale
``pruned-*.onnx`` beside fresh results.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

from prunekit.core.atomic import atomic_write_text

_TEMP = re.compile(r"^\..+\.(?P<pid>\d+)\.[A-Za-z0-9_]{6,}\.tmp.*$")
MANIFEST = ".prunekit-outputs.json"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def remove_stale_temps(directory: str | os.PathLike[str]) -> list[Path]:
    """Remove prunekit temporary files/folders in ``directory`` whose writing process no longer runs.

    Returns what was removed. Files set aside by an interrupted group swap are first moved back
    to their place when that place is empty. Live writers' temporaries are left alone.

    Example::

        remove_stale_temps("run-out")   # [PosixPath('run-out/.report.4242.x1y2z3ab.tmp.html')]
    """
    folder = Path(directory)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for entry in sorted(folder.iterdir()):
        match = _TEMP.match(entry.name)
        if not match or _alive(int(match["pid"])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            replaced = entry / ".replaced"
            if replaced.is_dir():
                for old in replaced.iterdir():
                    if not (folder / old.name).exists():
                        os.replace(old, folder / old.name)
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
        removed.append(entry)
    return removed


class RunOutputs:
    """The files a run writes into ``out_dir``, recorded so the next run there starts clean.

    ``start()`` removes stale temporaries and every file the previous run recorded (nothing
    else: a user's own files in the folder stay), ``finish(paths)`` records this run's files.

    Example::

        outputs = RunOutputs("run-out")
        outputs.start()
        ...                                 # write results
        outputs.finish(["results.json", "report.html"])
    """

    def __init__(self, out_dir: str | os.PathLike[str]):
        self.out = Path(out_dir)

    def previous(self) -> list[str]:
        """The file names the last finished run recorded (empty when there is no readable manifest)."""
        try:
            names = json.loads((self.out / MANIFEST).read_text(encoding="utf-8"))["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return []
        return [n for n in names if isinstance(n, str) and n and "/" not in n and "\\" not in n and n not in (".", "..")]

    def start(self, also: Iterable[str] = ()) -> list[Path]:
        """Remove stale temporaries, the previous run's recorded files and the names in ``also``; returns them."""
        self.out.mkdir(parents=True, exist_ok=True)
        removed = remove_stale_temps(self.out)
        for name in [*self.previous(), *also, MANIFEST]:
            path = self.out / name
            if path.is_file() or path.is_symlink():
                path.unlink()
                removed.append(path)
        return removed

    def finish(self, paths: Iterable[str | os.PathLike[str]]) -> None:
        """Record ``paths`` (files inside the output folder) as this run's outputs."""
        names = sorted({Path(p).name for p in paths if Path(p).parent.resolve() == self.out.resolve()})
        atomic_write_text(self.out / MANIFEST, json.dumps({"files": names}, indent=1) + "\n")
