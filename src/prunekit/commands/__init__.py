"""CLI subcommands: each module exposes ``configure_parser(parser)`` and ``run(args) -> int``."""

from __future__ import annotations

import argparse
from pathlib import Path


def directory(text: str) -> str:
    """An argparse ``type`` for an output folder: refused when it names an existing file (it is created if missing)."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; give a directory (it is created if missing)")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise argparse.ArgumentTypeError(f"{text} lies under {parent}, which is a file, not a directory")
            break
    return text
