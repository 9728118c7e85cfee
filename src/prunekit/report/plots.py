"""Plots with matplotlib (Agg backend, no display): Pareto fronts, sensitivity heat-maps, per-layer bars.

Every function returns a :class:`Figure` holding the PNG and SVG bytes, and writes
``STEM.png``/``STEM.svg`` atomically when given a ``stem`` path. The HTML report embeds the PNG.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunekit.core.atomic import atomic_write_bytes
from prunekit.errors import ConfigError

COST_LABELS = {
    "gzip_bytes": "state_dict size, gzip (bytes)",
    "raw_bytes": "state_dict size (bytes)",
    "sparse_macs": "sparse MACs per sample",
    "macs": "MACs per sample",
    "nonzeros": "nonzero parameters",
    "latency_ms": "latency, batch 32 (ms)",
}


@dataclass(frozen=True)
class Figure:
    """A rendered plot: title, PNG and SVG bytes, and the files written (if any)."""

    title: str
    png: bytes
    svg: bytes
    paths: tuple[Path, ...] = ()


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        from prunekit.errors import MissingDependencyError

        raise MissingDependencyError("plots need matplotlib: pip install 'prunekit[report]'") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _finish(plt: Any, fig: Any, title: str, stem: str | os.PathLike | None) -> Figure:
    fig.tight_layout()
    outputs = {}
    for fmt in ("png", "svg"):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, dpi=110, metadata={"Date": None} if fmt == "svg" else None)
        outputs[fmt] = buffer.getvalue()
    plt.close(fig)
    paths: tuple[Path, ...] = ()
    if stem is not None:
        paths = (Path(f"{stem}.png"), Path(f"{stem}.svg"))
        for path, fmt in zip(paths, ("png", "svg")):
            atomic_write_bytes(path, outputs[fmt])
    return Figure(title, outputs["png"], outputs["svg"], paths)


def plot_pareto(
    rows: Sequence[Mapping[str, Any]],
    cost: str,
    *,
    quality: str = "accuracy",
    front: Sequence[int] = (),
    stem: str | os.PathLike | None = None,
    title: str | None = None,
) -> Figure:
    """Quality vs ``cost`` for every trial, one marker per method, the Pareto front joined by a line.

    Example::

        plot_pareto(result.rows(), "gzip_bytes", front=pareto_front(rows, minimize="gzip_bytes"), stem="out/pareto_size")
    """
    points = [row for row in rows if row.get(cost) is not None and row.get(quality) is not None]
    if not points:
        raise ConfigError(f"no trial reported both {quality!r} and {cost!r}; nothing to plot")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    methods = list(dict.fromkeys(str(row.get("method", "trial")) for row in points))
    markers = "osD^v<>Ph*"
    for i, method in enumerate(methods):
        mine = [row for row in points if str(row.get("method", "trial")) == method]
        ax.scatter([r[cost] for r in mine], [r[quality] for r in mine], label=method, marker=markers[i % len(markers)], s=36)
    if front:
        chosen = [rows[i] for i in front]
        ax.plot([r[cost] for r in chosen], [r[quality] for r in chosen], color="black", linewidth=1, label="Pareto front")
    ax.set_xlabel(COST_LABELS.get(cost, cost))
    ax.set_ylabel(quality)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    title = title or f"{quality} vs {COST_LABELS.get(cost, cost)}"
    ax.set_title(title, fontsize=10)
    return _finish(plt, fig, title, stem)


def plot_heatmap(
    layers: Sequence[str],
    ratios: Sequence[float],
    values: Sequence[Sequence[float]],
    *,
    stem: str | os.PathLike | None = None,
    title: str = "Sensitivity",
    label: str = "metric",
) -> Figure:
    """A layer × ratio heat-map with each cell's value written in it (sensitivity tables).

    Example::

        plot_heatmap(table.layers, table.ratios, table.to_array(), stem="out/sensitivity")
    """
    if not layers or not ratios:
        raise ConfigError("a heat-map needs at least one layer and one ratio")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(ratios), 1.2 + 0.45 * len(layers)))
    image = ax.imshow([list(row) for row in values], cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(ratios)), [f"{r:.0%}" for r in ratios])
    ax.set_yticks(range(len(layers)), list(layers))
    ax.set_xlabel("ratio pruned (this layer alone)")
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.3g}", ha="center", va="center", fontsize=7, color="white")
    fig.colorbar(image, ax=ax, label=label)
    ax.set_title(title, fontsize=10)
    return _finish(plt, fig, title, stem)


def plot_layer_bars(
    layers: Sequence[str],
    series: Mapping[str, Sequence[float]],
    *,
    ylabel: str,
    stem: str | os.PathLike | None = None,
    title: str = "Per layer",
) -> Figure:
    """Grouped bars per layer, one bar per series (say sparsity before/after, or MACs before/after).

    Example::

        plot_layer_bars(["conv1", "fc1"], {"dense": [0, 0], "pruned": [0.5, 0.9]}, ylabel="sparsity")
    """
    if not layers or not series:
        raise ConfigError("layer bars need at least one layer and one series")
    for name, values in series.items():
        if len(values) != len(layers):
            raise ConfigError(f"series {name!r} has {len(values)} values for {len(layers)} layers")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 0.8 * len(layers) + 2), 3.6))
    width = 0.8 / len(series)
    for k, (name, values) in enumerate(series.items()):
        ax.bar([i + k * width - 0.4 + width / 2 for i in range(len(layers))], list(values), width, label=name)
    ax.set_xticks(range(len(layers)), list(layers), rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return _finish(plt, fig, title, stem)
