"""The figures of a sweep: accuracy against each cost, with the Pareto front, as PNG and SVG files."""

from __future__ import annotations

from pathlib import Path

from prunekit.report.plots import Figure, plot_pareto
from prunekit.sweep.pareto import pareto_front
from prunekit.sweep.runner import COSTS, SweepResult


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
