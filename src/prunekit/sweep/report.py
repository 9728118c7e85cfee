"""A sweep's report: the trials table, the Pareto fronts and one accuracy-vs-cost plot per cost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prunekit.core.tables import ResultTable
from prunekit.report.html import Report, Section, write_report
from prunekit.report.plots import Figure, plot_pareto
from prunekit.sweep.runner import COSTS, SweepResult
from prunekit.tradeoffs.pareto import pareto_front


def sweep_figures(result: SweepResult, quality: str = "accuracy") -> list[Figure]:
    """One Pareto plot per cost the trials reported, written to ``OUT/pareto_<cost>.{png,svg}``.

    Example::

        [figure.paths for figure in sweep_figures(result)]
    """
    rows = result.rows()
    figures = []
    for cost in COSTS:
        if any(row.get(cost) is not None and row.get(quality) is not None for row in rows):
            front = pareto_front(rows, quality, cost)
            figures.append(plot_pareto(rows, cost, quality=quality, front=front, stem=Path(result.out_dir) / f"pareto_{cost}"))
    return figures


def sweep_report(result: Any, title: str = "prunekit sweep") -> dict[str, Path]:
    """Figures and the report of a :class:`~prunekit.sweep.runner.SweepResult`, written to its directory.

    Example::

        sweep_report(run_sweep(objective, trials, "out"))["html"]
    """
    rows = result.rows()
    columns = ["trial", "status", "accuracy", "target", "sparsity", "gzip bytes", "sparse MACs", "latency ms", "seconds"]
    table = ResultTable("Trials", columns)

    def fmt(value: Any, spec: str) -> str:
        return "" if value is None else format(value, spec)

    for row in rows:
        table.add_row(
            row["id"],
            row["status"],
            fmt(row.get("accuracy"), ".4f"),
            fmt(row.get("target"), ".0%"),
            fmt(row.get("sparsity"), ".1%"),
            fmt(row.get("gzip_bytes"), ",.0f"),
            fmt(row.get("sparse_macs"), ",.0f"),
            fmt(row.get("latency_ms"), ".2f"),
            fmt(row.get("seconds"), ".1f"),
        )
    fronts = ResultTable("Pareto fronts (accuracy vs cost)", ["cost", "trials on the front, cheapest first"])
    for cost, ids in result.fronts().items():
        fronts.add_row(cost, ", ".join(ids))
    failed = [f"{r['id']}: {r.get('error', '')}" for r in result.failed]
    sections = [
        Section("Trials", tables=[table, fronts]),
        Section("Pareto plots", figures=sweep_figures(result) if result.succeeded else []),
    ]
    if failed:
        sections.append(Section("Failed trials", code="\n".join(failed)))
    return write_report(Report(title, sections, data=result.to_dict()), result.out_dir)
