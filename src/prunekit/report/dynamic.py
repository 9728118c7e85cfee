"""The plot of dynamic sparse training: mask turnover and connections regrown, update by update."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from prunekit.errors import ConfigError
from prunekit.report.plots import Figure, _finish, _pyplot


def plot_turnover(
    history: Sequence[Mapping[str, Any]],
    *,
    stem: str | os.PathLike | None = None,
    title: str = "Mask turnover during dynamic sparse training",
    x_key: str = "step",
) -> Figure:
    """Turnover (line) and connections regrown per update (bars) over training steps.

    ``history`` is the per-update history of :class:`prunekit.torch.unstructured.dynamic.DynamicPruner` or
    :class:`prunekit.keras.DynamicSparsity`: dicts with ``step``, ``turnover`` and ``regrown``
    (per layer, or a total). ``x_key="epoch"`` plots a per-epoch training history instead (the
    ``train_sparse`` records). Writes ``STEM.png``/``STEM.svg`` atomically when given a ``stem``.

    Example::

        plot_turnover(pruner.history, stem="out/turnover")
    """
    records = list(history)
    if not records:
        raise ConfigError("plot_turnover needs at least one update in the history (did regrowth run? check begin_step/end_step)")
    for index, record in enumerate(records):
        missing = [key for key in (x_key, "turnover", "regrown") if key not in record]
        if missing:
            raise ConfigError(f"history[{index}] has no {missing}: pass DynamicPruner.history or DynamicSparsity.history")
    steps = [int(r[x_key]) for r in records]
    turnover = [float(r["turnover"]) for r in records]
    regrown = [sum(r["regrown"].values()) if isinstance(r["regrown"], Mapping) else r["regrown"] for r in records]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    width = max(1.0, 0.6 * (steps[1] - steps[0])) if len(steps) > 1 else 1.0
    bars = ax.twinx()
    unit = "update" if x_key == "step" else x_key
    bars.bar(steps, regrown, width=width, color="tab:gray", alpha=0.35, label=f"regrown per {unit}")
    bars.set_ylabel(f"connections regrown per {unit}")
    ax.set_zorder(bars.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.plot(steps, turnover, marker="o", markersize=3, color="tab:blue", label="turnover")
    ax.set_xlabel("training step" if x_key == "step" else x_key)
    ax.set_ylabel("turnover (share of the first mask gone)")
    ax.set_ylim(0, max(1e-3, max(turnover)) * 1.15)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    return _finish(plt, fig, title, stem)
