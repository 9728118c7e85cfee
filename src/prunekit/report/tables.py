"""One table, two renderings: a rich console table and a Markdown table, from the same rows."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from prunekit._atomic import atomic_write_bytes


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` through a temporary file and a rename: never a half-written file."""
    atomic_write_bytes(path, text.encode("utf-8"))


@dataclass
class ResultTable:
    """Column names and rows of already-formatted cells.

    Example::

        table = ResultTable("Results", ["run", "accuracy"], [["dense", "98.6%"]])
        table.print(); table.to_markdown()
    """

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)

    def add_row(self, *cells: Any) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"row has {len(cells)} cells, table {self.title!r} has {len(self.columns)} columns")
        self.rows.append([str(cell) for cell in cells])

    def print(self, console: Any = None) -> None:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=self.title)
        for i, column in enumerate(self.columns):
            table.add_column(column, justify="left" if i == 0 else "right", no_wrap=i == 0)
        for row in self.rows:
            table.add_row(*row)
        (console or Console()).print(table)

    def to_markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.columns) + " |"]
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(self.columns) - 1)) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"
