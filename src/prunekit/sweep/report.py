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


def _channel_ratio(method: str) -> bool:
    """Whether the method's amount is a channel ratio (its trials remove channels rather than zero weights)."""
    from prunekit.errors import ConfigError
    from prunekit.methods import get_method

    try:
        return get_method(method).amount == "channel ratio"
    except ConfigError:  # a custom objective's own method name
        return False


def trials_table(result: Any) -> ResultTable:
    """The trials as one table, dense baseline first: what the console prints and the report shows.

    Channel-removal trials show their channel ratio as the target and their cost as MACs relative
    to the dense model (their weight sparsity is about 0 and says nothing).

    Example::

        trials_table(run_sweep(objective, trials, "out")).print()
    """
    rows = result.rows()
    dense_macs = next((row.get("sparse_macs") for row in rows if row["id"] == "dense"), None)
    columns = ["trial", "status", "accuracy", "target", "sparsity", "MACs ×", "gzip bytes", "latency ms", "seconds"]
    table = ResultTable("Trials", columns)

    def fmt(value: Any, spec: str) -> str:
        return "" if value is None else format(value, spec)

    for row in rows:
        channels = _channel_ratio(row["method"])
        macs = row.get("sparse_macs")
        table.add_row(
            row["id"],
            row["status"],
            fmt(row.get("accuracy"), ".4f"),
            fmt(row.get("target"), ".0%") + (" channels" if channels else ""),
            "-" if channels else fmt(row.get("sparsity"), ".1%"),
            f"{macs / dense_macs:.2f}" if macs is not None and dense_macs else "",
            fmt(row.get("gzip_bytes"), ",.0f"),
            fmt(row.get("latency_ms"), ".2f"),
            fmt(row.get("seconds"), ".1f"),
        )
    return table


def sweep_report(result: Any, title: str = "prunekit sweep") -> dict[str, Path]:
    """Figures and the report of a :class:`~prunekit.sweep.runner.SweepResult`, written to its directory.

    Example::

        sweep_report(run_sweep(objective, trials, "out"))["html"]
    """
    table = trials_table(result)
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
