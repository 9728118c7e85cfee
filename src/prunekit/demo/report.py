"""The demo's report: its results table, the accuracy-vs-size Pareto plot and the demo recipe, as HTML/Markdown/JSON."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prunekit.report.html import Report, Section, write_report
from prunekit.report.plots import plot_layer_bars, plot_pareto
from prunekit.tradeoffs.pareto import pareto_front


def demo_report(results: dict[str, Any], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``report.html``/``.md``/``.json`` for the results of ``run_demo`` (``{"dense": ..., "runs": [...]}``).

    Example::

        demo_report(run_demo(output_dir=None), "demo-out")["html"]
    """
    from prunekit.demo.tables import results_table
    from prunekit.recipes.config import builtin_recipe_text

    dense = dict(results["dense"], method="dense", sparsity=0.0)
    rows = [dense] + [dict(run) for run in results["runs"]]
    figures = [
        plot_pareto(rows, "gzip_bytes", front=pareto_front(rows, "accuracy", "gzip_bytes"), title="accuracy vs size (gzip)")
    ]
    labels = [f"{row['method']} {row['sparsity']:.0%}" for row in rows]
    figures.append(
        plot_layer_bars(labels, {"accuracy": [row["accuracy"] for row in rows]}, ylabel="test accuracy", title="Accuracy per run")
    )
    sections = [Section("Before and after", tables=[results_table(results)]), Section("Trade-off", figures=figures)]
    title = f"prunekit demo ({results.get('framework', 'torch')})"
    return write_report(Report(title, sections, data=results, recipe=builtin_recipe_text("demo")), out_dir)
