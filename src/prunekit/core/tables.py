"""One table, two renderings: a rich console table and a Markdown table, from the same rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
        """Print to ``console`` (default: stdout). Off a terminal (a log, a pipe) the table gets its
        natural width, so no number is cut or wrapped at 80 columns."""
        from rich.console import Console
        from rich.measure import Measurement
        from rich.table import Table

        table = Table(title=self.title)
        for i, column in enumerate(self.columns):
            table.add_column(column, justify="left" if i == 0 else "right", no_wrap=i == 0)
        for row in self.rows:
            table.add_row(*row)
        if console is None:
            console = Console()
            if not console.is_terminal:
                natural = Measurement.get(console, console.options.update(width=100_000), table).maximum
                console = Console(width=max(console.width, natural))
        console.print(table)

    def to_markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.columns) + " |"]
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(self.columns) - 1)) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"
