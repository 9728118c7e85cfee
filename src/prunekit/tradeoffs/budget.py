"""Per-layer pruning budgets, framework-free: sensitivity tables, linear cost models and the allocators.

Both backends (:mod:`prunekit.torch.tradeoffs.allocation`, :mod:`prunekit.keras.tradeoffs.allocation`) measure a
model into the types here and allocate with the same code, so a target means the same in both.
A budget is a fraction of the dense model's cost, for one target:

* ``"macs"``: sparse MACs per sample (a layer's MACs times the density of its weights);
* ``"params"``: nonzero parameters;
* ``"size"``: bytes of a bitmap-sparse encoding (nonzero values plus one bit per weight position).

Each target is linear in every layer's ratio (:class:`CostModel`), so the cost of any allocation
is exact before pruning. :func:`sensitivity_allocation` follows :func:`greedy_path` from dense,
each step (a layer to a higher measured ratio) the one that costs the least metric per unit of
budget saved, and ends the last step part-way so the cost meets the budget exactly.
:func:`uniform_allocation` gives every layer the same ratio and :func:`threshold_allocation` one
magnitude threshold across layers, both at the same budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from prunekit.core.records import ModelSummary
from prunekit.core.tables import ResultTable
from prunekit.errors import ConfigError, PrunekitError

TARGETS = ("macs", "params", "size")
MAX_RATIO = 0.999  # the most a layer is pruned by uniform and threshold allocation (one weight in a thousand stays)
Model = TypeVar("Model")


class MetricError(PrunekitError, RuntimeError):
    """A metric function raised or returned a non-number; the message names the layer and ratio."""


def check_ratios(ratios: Sequence[float]) -> list[float]:
    """``ratios`` as floats, or a ``ConfigError`` unless they are increasing, distinct and in (0, 1).

    Example::

        check_ratios((0.5, 0.9))  # [0.5, 0.9]
    """
    checked = [float(r) for r in ratios]
    if not checked or not all(0 < r < 1 for r in checked) or sorted(set(checked)) != checked:
        raise ConfigError(f"ratios should be increasing, distinct and in (0, 1), got {checked}")
    return checked


def evaluate_metric(metric: Callable[[Model], Any], model: Model, what: str) -> float:
    """``metric(model)`` as a float; a ``MetricError`` naming ``what`` if it raises or gives no finite number.

    A 0-d tensor (torch, TensorFlow) or array counts as a number.

    Example::

        evaluate_metric(Accuracy(x_val, y_val), model, "layer 'fc1' pruned at ratio 0.5")
    """
    try:
        value = metric(model)
    except Exception as exc:
        raise MetricError(f"the metric raised {type(exc).__name__} on {what}: {exc}") from exc
    if getattr(value, "ndim", None) == 0 and not isinstance(value, np.generic):
        value = value.item() if hasattr(value, "item") else value.numpy()
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) or not math.isfinite(float(value)):
        raise MetricError(f"the metric returned {value!r} on {what}; it should return a finite number (higher is better)")
    return float(value)


@dataclass
class SensitivityTable:
    """Scores of a metric with one layer pruned at a time: ``scores[layer][i]`` is at ``ratios[i]``.

    Example::

        table.score("conv2", 0.5), table.drop("conv2", 0.5)   # metric, and baseline minus it
    """

    baseline: float
    ratios: list[float]
    scores: dict[str, list[float]] = field(default_factory=dict)
    metric: str = "metric"

    @property
    def layers(self) -> list[str]:
        return list(self.scores)

    def score(self, layer: str, ratio: float) -> float:
        """The metric with ``layer`` pruned at ``ratio`` (0 gives the baseline)."""
        if ratio == 0:
            return self.baseline
        if layer not in self.scores:
            raise KeyError(f"no layer {layer!r} in the sensitivity table; layers: {self.layers}")
        for known, value in zip(self.ratios, self.scores[layer]):
            if math.isclose(known, ratio):
                return value
        raise KeyError(f"ratio {ratio} was not measured; ratios: {self.ratios}")

    def drop(self, layer: str, ratio: float) -> float:
        """How much the metric falls below the baseline when ``layer`` alone is pruned at ``ratio``."""
        return self.baseline - self.score(layer, ratio)

    def interpolated_drop(self, layer: str, ratio: float) -> float:
        """The drop at any ratio, linear between the measured ones (0 at ratio 0)."""
        drops = [0.0, *[self.baseline - s for s in self.scores[layer]]]
        return float(np.interp(ratio, [0.0, *self.ratios], drops))

    def to_array(self) -> np.ndarray:
        """Scores as a ``(layers, ratios)`` array, in the order of :attr:`layers` and :attr:`ratios`."""
        return np.array([self.scores[layer] for layer in self.layers], dtype=float).reshape(len(self.scores), len(self.ratios))

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "baseline": self.baseline,
            "ratios": list(self.ratios),
            "scores": {layer: list(values) for layer, values in self.scores.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SensitivityTable:
        return cls(
            float(data["baseline"]),
            [float(r) for r in data["ratios"]],
            {k: [float(v) for v in vs] for k, vs in data["scores"].items()},
            data.get("metric", "metric"),
        )

    def heatmap(self, stem: str | None = None, title: str = "Sensitivity") -> Any:
        """The layer × ratio heat-map (a :class:`~prunekit.report.plots.Figure`; PNG+SVG files at ``stem``)."""
        from prunekit.report.plots import plot_heatmap

        return plot_heatmap(self.layers, self.ratios, self.to_array().tolist(), stem=stem, title=title, label=self.metric)

    def table(self, title: str = "Sensitivity") -> ResultTable:
        """Layer × ratio table of scores, with the baseline in the title."""
        result = ResultTable(f"{title} ({self.metric}; dense {self.baseline:.4g})", ["layer", *[f"{r:.0%}" for r in self.ratios]])
        for layer, values in self.scores.items():
            result.add_row(layer, *[f"{v:.4g}" for v in values])
        return result


@dataclass(frozen=True)
class CostModel:
    """Cost of a model as ``fixed + sum(variable[layer] * (1 - ratio[layer]))`` for one target."""

    target: str
    fixed: float
    variable: dict[str, float]

    @property
    def dense(self) -> float:
        return self.fixed + sum(self.variable.values())

    def cost(self, ratios: dict[str, float]) -> float:
        """Cost with each layer pruned at ``ratios[layer]`` (0 for layers not listed)."""
        return self.fixed + sum(v * (1 - ratios.get(layer, 0.0)) for layer, v in self.variable.items())


@dataclass(frozen=True)
class Allocation:
    """Per-layer ratios chosen for a budget, with the predicted cost and (for sensitivity) metric drop."""

    method: str
    target: str
    budget: float
    ratios: dict[str, float]
    cost: float
    dense_cost: float
    predicted_drop: float | None = None

    @property
    def cost_fraction(self) -> float:
        return self.cost / self.dense_cost


@dataclass(frozen=True)
class LayerWeights:
    """What one layer's ratio prunes: its weights' elements, how many are nonzero, bytes per element, the layer's MACs.

    ``macs`` are the MACs that scale with the density of these weights (0 when they do not).
    """

    elements: int
    nonzeros: int
    itemsize: int
    macs: int


def check_target(target: str, channel_removal: str) -> None:
    """A ``ConfigError`` unless ``target`` is one of :data:`TARGETS`; ``channel_removal`` names the latency route.

    Example::

        check_target("latency", "prunekit.keras.prune_channels")  # raises: a latency budget needs channel removal
    """
    if target not in TARGETS:
        raise ConfigError(
            f"target should be one of {TARGETS}, got {target!r}; a latency budget needs channel removal "
            f"(unstructured zeros do not make dense kernels faster): use {channel_removal}"
        )


def linear_cost_model(summary: ModelSummary, layers: dict[str, LayerWeights], weight_bytes: float, target: str) -> CostModel:
    """The cost model of a dense model from its summary, the weights of ``layers`` and all its weights' bytes.

    Example::

        costs = linear_cost_model(summary, {"fc": LayerWeights(100, 100, 4, 100)}, 440.0, "size")
        costs.dense  # 440 + 100 / 8 bits of bitmap
    """
    if target == "macs":
        variable = {layer: float(w.macs) for layer, w in layers.items()}
        return CostModel(target, float(summary.macs) - sum(variable.values()), variable)
    if target == "params":
        variable = {layer: float(w.elements) for layer, w in layers.items()}
        return CostModel(target, float(summary.params) - sum(variable.values()), variable)
    variable = {layer: float(w.elements * w.itemsize) for layer, w in layers.items()}
    bitmaps = sum(w.elements / 8 for w in layers.values())
    return CostModel(target, float(weight_bytes) - sum(variable.values()) + bitmaps, variable)


def measured_cost_of(summary: ModelSummary, layers: dict[str, LayerWeights], weight_bytes: float, target: str) -> float:
    """The ``target`` cost of a pruned model from its summary and the nonzeros of the weights of ``layers``.

    Example::

        measured_cost_of(summary, {"fc": LayerWeights(100, 30, 4, 100)}, 440.0, "size")  # 440 - 70 * 4 + 12.5
    """
    if target == "macs":
        return float(summary.sparse_macs)
    if target == "params":
        return float(summary.nonzeros)
    return float(weight_bytes) + sum((w.nonzeros - w.elements) * w.itemsize + w.elements / 8 for w in layers.values())


def check_budget(costs: CostModel, budget: float, max_ratio: float) -> float:
    """``budget`` (a fraction of dense) in the target's unit; a ``ConfigError`` naming the closest achievable.

    Example::

        check_budget(costs, 0.3, max(table.ratios))  # 0.3 * costs.dense
    """
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget <= 1:
        raise ConfigError(f"budget should be a fraction of the dense {costs.target} in (0, 1], got {budget!r}")
    absolute = budget * costs.dense
    floor = costs.cost({layer: max_ratio for layer in costs.variable})
    if absolute < floor - 1e-9:
        raise ConfigError(
            f"a {costs.target} budget of {budget:.1%} of dense ({absolute:,.0f}) cannot be met: the closest achievable, "
            f"with every layer at the highest ratio {max_ratio:.0%}, is {floor:,.0f} ({floor / costs.dense:.1%} of dense); "
            "raise the budget or measure sensitivity at higher ratios"
        )
    return absolute


def greedy_path(table: SensitivityTable, saved: Callable[[str, float], float]) -> list[dict[str, float]]:
    """Allocations from dense to the most pruned the table allows, each one step further than the last.

    ``saved(layer, ratio)`` is the budget saved by pruning ``layer`` alone at a measured ratio (0 at
    ratio 0). Each step moves one layer to a higher measured ratio: the step with the least
    predicted metric drop (:meth:`SensitivityTable.interpolated_drop`) per unit of budget saved.
    The path ends when no step saves anything.

    Example::

        path = greedy_path(table, lambda layer, ratio: macs[layer] * ratio)
        path[0]   # {"conv1": 0.0, "conv2": 0.0, ...}
    """
    grid = [0.0, *table.ratios]
    position = {layer: 0 for layer in table.layers}
    path = [{layer: 0.0 for layer in table.layers}]
    while True:
        best: tuple[float, str, int] | None = None
        for layer, index in position.items():
            for nxt in range(index + 1, len(grid)):
                gain = saved(layer, grid[nxt]) - saved(layer, grid[index])
                if gain <= 0:
                    continue
                harm = table.interpolated_drop(layer, grid[nxt]) - table.interpolated_drop(layer, grid[index])
                if best is None or harm / gain < best[0]:
                    best = (harm / gain, layer, nxt)
        if best is None:
            return path
        _, layer, nxt = best
        position[layer] = nxt
        path.append({**path[-1], layer: grid[nxt]})


def sensitivity_allocation(table: SensitivityTable, costs: CostModel, budget: float) -> Allocation:
    """The point of :func:`greedy_path` where the linear cost meets ``budget`` exactly, the last step taken part-way.

    The predicted drop is the sum of each layer's measured drop at its ratio (interpolated
    between measured ratios). An unreachable budget raises a ``ConfigError`` naming the closest
    achievable one.

    Example::

        sensitivity_allocation(table, CostModel("params", 20.0, {"0": 100.0, "1": 100.0}), 0.6).ratios
    """
    absolute = check_budget(costs, budget, max(table.ratios))
    path = greedy_path(table, lambda layer, ratio: costs.variable[layer] * ratio)
    ratios = path[-1]
    for before, after in zip(path, path[1:]):
        if costs.cost(after) <= absolute + 1e-9:  # the step reaching the budget, taken only as far as needed
            layer = next(name for name in after if after[name] != before[name])
            excess = max(0.0, costs.cost(before) - absolute)
            ratios = {**before, layer: before[layer] + excess / costs.variable[layer]}
            break
    drop = sum(table.interpolated_drop(layer, r) for layer, r in ratios.items())
    return Allocation("sensitivity", costs.target, budget, ratios, costs.cost(ratios), costs.dense, drop)


def uniform_allocation(costs: CostModel, budget: float) -> Allocation:
    """The same ratio for every layer of ``costs``, solved from the linear cost so it meets ``budget``.

    Example::

        uniform_allocation(CostModel("params", 20.0, {"0": 100.0, "1": 100.0}), 0.5).ratios  # 0.55 each
    """
    absolute = check_budget(costs, budget, MAX_RATIO)
    ratio = max(0.0, 1 - (absolute - costs.fixed) / sum(costs.variable.values()))
    ratios = {layer: ratio for layer in costs.variable}
    return Allocation("uniform", costs.target, budget, ratios, costs.cost(ratios), costs.dense)


def threshold_allocation(costs: CostModel, magnitudes: dict[str, np.ndarray], budget: float) -> Allocation:
    """Per-layer ratios of one global magnitude threshold, found by bisection so the cost meets ``budget``.

    ``magnitudes[layer]`` holds the absolute values of the weights the layer's ratio prunes.

    Example::

        threshold_allocation(costs, {"fc1": np.abs(w1), "fc2": np.abs(w2)}, 0.3).ratios
    """
    absolute = check_budget(costs, budget, MAX_RATIO)
    ordered = {layer: np.sort(np.asarray(m, dtype=float).ravel()) for layer, m in magnitudes.items()}

    def ratios_at(threshold: float) -> dict[str, float]:
        return {layer: float(np.searchsorted(m, threshold, side="left")) / m.size for layer, m in ordered.items()}

    low, high = 0.0, float(max(m[-1] for m in ordered.values())) + 1.0
    for _ in range(60):
        middle = (low + high) / 2
        if costs.cost(ratios_at(middle)) > absolute:
            low = middle
        else:
            high = middle
    ratios = {layer: min(r, MAX_RATIO) for layer, r in ratios_at(high).items()}
    return Allocation("global", costs.target, budget, ratios, costs.cost(ratios), costs.dense)


def comparison_rows(
    allocations: list[Allocation],
    prune: Callable[[dict[str, float]], Model],
    measure: Callable[[Model], float],
    metric: Callable[[Model], float],
) -> list[dict[str, Any]]:
    """One row per allocation: its ratios, the cost ``measure``-d on the model ``prune`` gives, and ``metric`` of it.

    Example::

        rows = comparison_rows([greedy, uniform], lambda r: apply_ratios(model, r), measure, Accuracy(x, y))
    """
    rows = []
    for allocation in allocations:
        pruned = prune(allocation.ratios)
        actual = measure(pruned)
        rows.append(
            {
                "method": allocation.method,
                "target": allocation.target,
                "budget": allocation.budget,
                "ratios": allocation.ratios,
                "cost": actual,
                "cost_fraction": actual / allocation.dense_cost,
                "metric": float(metric(pruned)),
            }
        )
    return rows


def allocation_table(rows: list[dict[str, Any]], title: str = "Allocation at the same budget") -> ResultTable:
    """The comparison as a table: method, cost vs budget, metric, and the per-layer ratios."""
    layers = list(rows[0]["ratios"]) if rows else []
    table = ResultTable(title, ["allocation", "cost / dense", "budget", "metric", *layers])
    for row in rows:
        table.add_row(
            row["method"],
            f"{row['cost_fraction']:.2%}",
            f"{row['budget']:.2%}",
            f"{row['metric']:.4f}",
            *[f"{row['ratios'][layer]:.2f}" for layer in layers],
        )
    return table
