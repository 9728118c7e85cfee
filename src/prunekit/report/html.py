"""Reports: one self-contained HTML file (plots embedded as base64 PNG), plus Markdown and JSON.

A :class:`Report` is a title, sections (text, tables, figures, code) and a JSON payload; it also
carries the exact recipe and the versions of the packages used. :func:`write_report` writes
``report.html``, ``report.md`` (figures as PNG files beside it) and ``report.json`` atomically.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import os
import platform
import re
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from prunekit.core.atomic import atomic_write_bytes, atomic_write_text
from prunekit.core.moved import moved_names
from prunekit.core.tables import ResultTable
from prunekit.report.plots import Figure

PACKAGES = ("prunekit", "torch", "numpy", "onnx", "onnxruntime", "matplotlib", "keras", "tensorflow")

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
caption { font-weight: 600; text-align: left; padding: .3em 0; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; font-size: .85em; }
.meta { color: #666; font-size: .85em; }
"""


@dataclass
class Section:
    """One part of a report: a heading, then text, tables, figures and a code block (each optional)."""

    heading: str
    text: str = ""
    tables: list[ResultTable] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    code: str = ""


@dataclass
class Report:
    """A report: title, sections, the JSON payload, the recipe text and the package versions.

    Example::

        report = Report("My sweep", [Section("Results", tables=[table], figures=[figure])], data={"trials": [...]})
        write_report(report, "out")
    """

    title: str
    sections: list[Section] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    recipe: str | None = None
    versions: dict[str, str] = field(default_factory=lambda: package_versions())


def package_versions() -> dict[str, str]:
    """Versions of Python and of the installed packages among :data:`PACKAGES`.

    Example::

        package_versions()["python"]  # "3.11.9"
    """
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "figure"


def _html_table(table: ResultTable) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in table.rows)
    return f"<table><caption>{html.escape(table.title)}</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_figure(figure: Figure) -> str:
    data = base64.b64encode(figure.png).decode("ascii")
    title = html.escape(figure.title)
    return f'<figure><img alt="{title}" src="data:image/png;base64,{data}"><figcaption>{title}</figcaption></figure>'


def render_html(report: Report) -> str:
    """The report as one HTML page with every plot embedded (no external files or network).

    Example::

        Path("report.html").write_text(render_html(report))
    """
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(report.title)}</title>",
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(report.title)}</h1>",
        f"<p class='meta'>generated {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}</p>",
    ]
    for section in report.sections:
        parts.append(f"<section><h2>{html.escape(section.heading)}</h2>")
        if section.text:
            parts.append(f"<p>{html.escape(section.text)}</p>")
        parts += [_html_table(table) for table in section.tables]
        parts += [_html_figure(figure) for figure in section.figures]
        if section.code:
            parts.append(f"<pre>{html.escape(section.code)}</pre>")
        parts.append("</section>")
    if report.recipe:
        parts.append(f"<section><h2>Recipe</h2><pre>{html.escape(report.recipe)}</pre></section>")
    versions = ResultTable("Versions", ["package", "version"], [[k, v] for k, v in report.versions.items()])
    parts.append(f"<section><h2>Versions</h2>{_html_table(versions)}</section></body></html>")
    return "\n".join(parts)


def _markdown(report: Report, figure_names: dict[int, str]) -> str:
    lines = [f"# {report.title}", ""]
    for section in report.sections:
        lines += [f"## {section.heading}", ""]
        if section.text:
            lines += [section.text, ""]
        lines += [table.to_markdown() for table in section.tables]
        lines += [f"![{figure.title}]({figure_names[id(figure)]})\n" for figure in section.figures]
        if section.code:
            lines += ["```", section.code.rstrip(), "```", ""]
    if report.recipe:
        lines += ["## Recipe", "", "```yaml", report.recipe.rstrip(), "```", ""]
    lines += ["## Versions", "", *[f"- {k}: {v}" for k, v in report.versions.items()], ""]
    return "\n".join(lines)


def write_report(report: Report, out_dir: str | os.PathLike, stem: str = "report") -> dict[str, Path]:
    """Write ``STEM.html`` (self-contained), ``STEM.md`` (+ PNGs it links) and ``STEM.json``; return their paths.

    Example::

        paths = write_report(report, "out")
        paths["html"]  # out/report.html
    """
    out = Path(out_dir)
    names: dict[int, str] = {}
    for section in report.sections:
        for figure in section.figures:
            png = next((p for p in figure.paths if p.suffix == ".png"), None)
            if png is not None and png.resolve().parent == out.resolve():
                names[id(figure)] = png.name
                continue
            name = f"{stem}_figures/{_slug(section.heading)}-{_slug(figure.title)}.png"
            atomic_write_bytes(out / name, figure.png)
            names[id(figure)] = name
    paths = {"html": out / f"{stem}.html", "md": out / f"{stem}.md", "json": out / f"{stem}.json"}
    atomic_write_text(paths["html"], render_html(report))
    atomic_write_text(paths["md"], _markdown(report, names))
    payload = {"title": report.title, "data": report.data, "recipe": report.recipe, "versions": report.versions}
    atomic_write_text(paths["json"], json.dumps(payload, indent=2, default=str) + "\n")
    return paths


# docs/tradeoffs.md named ``from prunekit.report.html import sweep_report`` before sweeps' reports moved up to
# the sweep package; the old name works for one release, with a warning (imported by name only when asked for)
__getattr__ = moved_names(__name__, {"sweep_report": "prunekit.sweep.report"})
