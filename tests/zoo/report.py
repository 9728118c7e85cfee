"""What the two zoo report scripts share: their command line, the run over families, the status file and the
rewrite of the docs' marked block (``scripts/zoo_report.py``, ``scripts/llm_zoo_report.py``).

Each script says how to check one family and how to render its records; this module runs the families,
merges them into the recorded ones when only some are named, and writes both files atomically, so the
docs are never typed by hand.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from prunekit.core.atomic import atomic_write_text

Record = dict


#: The repository root: the paths of a report are relative to it.
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Report:
    """Where a zoo report writes: its ``status_file`` (JSON) and the ``docs_file`` page holding the block between
    the ``<!-- {marker}:start -->`` and ``<!-- {marker}:end -->`` lines (a page without them gets a section
    titled ``heading``); both paths relative to the repository root unless absolute."""

    status_file: str | Path
    docs_file: str | Path
    marker: str
    heading: str

    @property
    def status(self) -> Path:
        return ROOT / self.status_file

    @property
    def docs(self) -> Path:
        return ROOT / self.docs_file

    @property
    def start(self) -> str:
        return f"<!-- {self.marker}:start -->"

    @property
    def end(self) -> str:
        return f"<!-- {self.marker}:end -->"

    def load(self) -> dict[str, Record]:
        """The records last written (none before the first run)."""
        return json.loads(self.status.read_text(encoding="utf-8")) if self.status.exists() else {}

    def with_block(self, text: str, block: str) -> str:
        """``text`` with its marked block replaced by ``block`` (or a new section at its end holding it)."""
        if self.start in text and self.end in text:
            head, rest = text.split(self.start, 1)
            return head + block + rest.split(self.end, 1)[1]
        return text.rstrip("\n") + f"\n\n## {self.heading}\n\n" + block + "\n"

    def write(self, records: dict[str, Record], render: Callable[[dict[str, Record]], str]) -> dict[str, Record]:
        """Write ``records`` (sorted by family) and the docs block ``render`` makes of them; returns them sorted."""
        records = dict(sorted(records.items()))
        atomic_write_text(self.status, json.dumps(records, indent=1) + "\n")
        atomic_write_text(self.docs, self.with_block(self.docs.read_text(encoding="utf-8"), render(records)))
        return records


def check_arguments(argv: list[str], usage: str) -> None:
    """Family names only: ``--help`` prints ``usage`` and exits 0, any other option exits with an error
    (so a typo never records a family named like an option)."""
    if any(arg.startswith("-") for arg in argv):
        print(usage)
        raise SystemExit(0 if set(argv) <= {"-h", "--help"} else f"unknown option in {argv}; pass family names only")


def run_families(
    argv: list[str],
    usage: str,
    report: Report,
    discover: Callable[[], Iterable[str]],
    check: Callable[[str], tuple[Record, str]],
    render: Callable[[dict[str, Record]], str],
) -> dict[str, Record]:
    """Check the families named in ``argv`` (every ``discover``ed one when empty, replacing the record) on one
    torch thread, printing ``check``'s line for each, then write the status file and the docs block."""
    check_arguments(argv, usage)
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(1)
    records = report.load() if argv else {}
    for family in argv or list(discover()):
        records[family], line = check(family)
        print(line, flush=True)
    return report.write(records, render)


def cell(text: str, width: int) -> str:
    """``text`` as one Markdown table cell of at most ``width`` characters."""
    return text.replace("|", "\\|").replace("\n", " ")[:width]
