"""The demo's report: its results table, the accuracy-vs-size Pareto plot and the demo recipe, as HTML/Markdown/JSON."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prunekit.report.html import Report, Section, write_report
from prunekit.report.plots import plot_layer_bars, plot_pareto
from prunekit.tradeoffs.pareto import pareto_front


def demo_report(results: dict[str, Any], out_dir: str | os.PathLike, recipe: str | None = None) -> dict[str, Path]:
    """Write ``report.html``/``.md``/``.json`` for the results of ``run_demo`` (``{"dense": ..., "runs": [...]}``).

    The report holds every table the console showed (results, structured, deployable artifacts)
    and ``recipe``, the recipe that ran (default: derived from the results' framework, method,
    amounts and recovery).

    Example::

        demo_report(run_demo(output_dir=None), "demo-out")["html"]
    """
    from prunekit.demo.tables import demo_tables
    from prunekit.recipes.demo_recipe import demo_recipe_text

    dense = dict(results["dense"], method="dense", sparsity=0.0)
    rows = [dense] + [dict(run) for run in results["runs"]]
    figures = [
        plot_pareto(rows, "gzip_bytes", front=pareto_front(rows, "accuracy", "gzip_bytes"), title="accuracy vs size (gzip)")
    ]
    labels = [f"{row['method']} {row['sparsity']:.0%}" for row in rows]
    figures.append(
        plot_layer_bars(labels, {"accuracy": [row["accuracy"] for row in rows]}, ylabel="test accuracy", title="Accuracy per run")
    )
    tables = demo_tables(results)
    sections = [Section("Before and after", tables=tables[:1])]
    sections += [Section(table.title, tables=[table]) for table in tables[1:]]
    sections.append(Section("Trade-off", figures=figures))
    framework = results.get("framework", "torch")
    if recipe is None:
        runs = results["runs"]
        recipe = demo_recipe_text(
            framework,
            runs[0]["method"] if runs else None,
            list(dict.fromkeys(run["sparsity"] for run in runs)) or None,
            recover=next((run["recover"] for run in runs if "recover" in run), None),
        )
    return write_report(Report(f"prunekit demo ({framework})", sections, data=results, recipe=recipe), out_dir)
