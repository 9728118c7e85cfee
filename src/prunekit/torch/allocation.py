"""Per-layer pruning ratios for a budget, chosen from sensitivity data, beside uniform and global allocation.

A budget is a fraction of the dense model's cost, for one target:

* ``"macs"``: sparse MACs per sample (a layer's MACs times the density of its weights);
* ``"params"``: nonzero parameters;
* ``"size"``: bytes of a bitmap-sparse encoding (nonzero values plus one bit per weight position).

Each target is linear in every layer's ratio, so the cost of any allocation is exact before
pruning. :func:`allocate_ratios` follows :func:`greedy_path` from dense, each step (a layer to a
higher measured ratio) the one that costs the least metric per unit of budget saved, and ends the
last step part-way so the cost meets the budget exactly. :func:`uniform_ratios` gives every layer
the same ratio and :func:`global_ratios` one magnitude threshold across layers, both at the same
budget. Latency is not linear and zeroed weights do not lower it: channel removal with measured
costs is in :mod:`prunekit.torch.structured_allocation`, on the same greedy path.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.report.tables import ResultTable
from prunekit.torch.macs import ExampleInputs
from prunekit.torch.sensitivity import SensitivityTable
from prunekit.torch.summary import summarize
from prunekit.torch.unstructured import prune_unstructured

TARGETS = ("macs", "params", "size")


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


def cost_model(model: nn.Module, example_inputs: ExampleInputs, layers: list[str], target: str = "macs") -> CostModel:
    """How ``target`` depends on the ratios of ``layers`` (module names) of ``model``.

    Example::

        costs = cost_model(DigitsCNN(), torch.zeros(1, 1, 8, 8), ["conv1", "conv2", "fc1", "fc2"], "macs")
        costs.dense  # 1330432
    """
    if target not in TARGETS:
        raise ConfigError(f"target should be one of {TARGETS}, got {target!r}; a latency budget needs channel removal "
                          "(unstructured zeros do not make dense kernels faster): use "
                          "prunekit.torch.structured_allocation.allocate_channels")
    modules = dict(model.named_modules())
    missing = [layer for layer in layers if not isinstance(getattr(modules.get(layer), "weight", None), torch.Tensor)]
    if missing:
        raise ConfigError(f"layers {missing} are not modules with a weight in the model")
    summary = summarize(model, example_inputs)
    variable: dict[str, float] = {}
    for layer in layers:
        weight = modules[layer].weight
        if target == "macs":
            variable[layer] = float(summary.layer(layer).macs)
        elif target == "params":
            variable[layer] = float(weight.numel())
        else:
            variable[layer] = float(weight.numel() * weight.element_size())
    if target == "macs":
        fixed = float(summary.macs) - sum(variable.values())
    elif target == "params":
        fixed = float(summary.params) - sum(variable.values())
    else:
        all_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        fixed = float(all_bytes) - sum(variable.values()) + sum(modules[l].weight.numel() / 8 for l in layers)
    return CostModel(target, fixed, variable)


def _check_budget(costs: CostModel, budget: float, max_ratio: float) -> float:
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget <= 1:
        raise ConfigError(f"budget should be a fraction of the dense {costs.target} in (0, 1], got {budget!r}")
    absolute = budget * costs.dense
    floor = costs.cost({layer: max_ratio for layer in costs.variable})
    if absolute < floor - 1e-9:
        raise ConfigError(
            f"a {costs.target} budget of {budget:.1%} of dense ({absolute:,.0f}) cannot be met: the closest achievable, "
            f"with every layer at the highest ratio {max_ratio:.0%}, is {floor:,.0f} ({floor / costs.dense:.1%} of dense); "
            "raise the budget or measure sensitivity at higher ratios")
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


def allocate_ratios(table: SensitivityTable, model: nn.Module, example_inputs: ExampleInputs, budget: float,
                    target: str = "macs") -> Allocation:
    """Choose per-layer ratios meeting ``budget`` (a fraction of the dense ``target``) with the least predicted drop.

    The ratios are the point of :func:`greedy_path` where the cost meets the budget exactly (the
    cost is linear in each layer's ratio, so the last step is taken part-way). The predicted drop
    is the sum of each layer's measured drop at its ratio (interpolated between measured ratios).
    An unreachable budget raises a ``ConfigError`` naming the closest achievable one; a latency
    budget needs channel removal: :func:`~prunekit.torch.structured_allocation.allocate_channels`.

    Example::

        table = analyze_sensitivity(model, Accuracy(x_val, y_val), ratios=(0.5, 0.7, 0.9))
        allocation = allocate_ratios(table, model, torch.zeros(1, 1, 8, 8), budget=0.3, target="macs")
        pruned = apply_ratios(model, allocation.ratios)
    """
    costs = cost_model(model, example_inputs, table.layers, target)
    absolute = _check_budget(costs, budget, max(table.ratios))
    path = greedy_path(table, lambda layer, ratio: costs.variable[layer] * ratio)
    ratios = path[-1]
    for before, after in zip(path, path[1:]):
        if costs.cost(after) <= absolute + 1e-9:  # the step reaching the budget, taken only as far as needed
            layer = next(name for name in after if after[name] != before[name])
            excess = max(0.0, costs.cost(before) - absolute)
            ratios = {**before, layer: before[layer] + excess / costs.variable[layer]}
            break
    drop = sum(table.interpolated_drop(layer, r) for layer, r in ratios.items())
    return Allocation("sensitivity", target, budget, ratios, costs.cost(ratios), costs.dense, drop)


def uniform_ratios(model: nn.Module, example_inputs: ExampleInputs, layers: list[str], budget: float,
                   target: str = "macs") -> Allocation:
    """The same ratio for every layer in ``layers``, chosen so the cost meets ``budget``.

    Example::

        uniform_ratios(model, torch.zeros(1, 1, 8, 8), ["conv1", "conv2", "fc1", "fc2"], 0.3).ratios
    """
    costs = cost_model(model, example_inputs, layers, target)
    absolute = _check_budget(costs, budget, 0.999)
    ratio = max(0.0, 1 - (absolute - costs.fixed) / sum(costs.variable.values()))
    ratios = {layer: ratio for layer in layers}
    return Allocation("uniform", target, budget, ratios, costs.cost(ratios), costs.dense)


def global_ratios(model: nn.Module, example_inputs: ExampleInputs, layers: list[str], budget: float,
                  target: str = "macs") -> Allocation:
    """Per-layer ratios of one global magnitude threshold, found by bisection so the cost meets ``budget``.

    Example::

        global_ratios(model, torch.zeros(1, 1, 8, 8), ["conv1", "conv2", "fc1", "fc2"], 0.3).ratios
    """
    costs = cost_model(model, example_inputs, layers, target)
    absolute = _check_budget(costs, budget, 0.999)
    modules = dict(model.named_modules())
    magnitudes = {layer: np.sort(np.abs(modules[layer].weight.detach().cpu().numpy().ravel())) for layer in layers}

    def ratios_at(threshold: float) -> dict[str, float]:
        return {layer: float(np.searchsorted(m, threshold, side="left")) / m.size for layer, m in magnitudes.items()}

    low, high = 0.0, float(max(m[-1] for m in magnitudes.values())) + 1.0
    for _ in range(60):
        middle = (low + high) / 2
        if costs.cost(ratios_at(middle)) > absolute:
            low = middle
        else:
            high = middle
    ratios = {layer: min(r, 0.999) for layer, r in ratios_at(high).items()}
    return Allocation("global", target, budget, ratios, costs.cost(ratios), costs.dense)


def search_ratios(table: SensitivityTable, model: nn.Module, example_inputs: ExampleInputs, budget: float,
                  metric: Callable[[nn.Module], float], target: str = "macs", steps: int = 4) -> Allocation:
    """Search between the greedy and the global-magnitude allocations for the best ``metric`` at ``budget``.

    Both meet the budget and the cost is linear in the ratios, so every blend
    ``a * greedy + (1 - a) * global`` meets it too; ``steps + 1`` blends (``a`` from 0 to 1) are
    pruned and scored with ``metric`` (validation data, higher is better) and the best is kept.
    Its ``predicted_drop`` is the measured drop from the unpruned model's ``metric``.

    Example::

        allocation = search_ratios(table, model, torch.zeros(1, 1, 8, 8), 0.25, Accuracy(x_val, y_val))
    """
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps should be an integer >= 1, got {steps!r}")
    greedy = allocate_ratios(table, model, example_inputs, budget, target)
    threshold = global_ratios(model, example_inputs, table.layers, budget, target)
    costs = cost_model(model, example_inputs, table.layers, target)
    baseline = float(metric(model))
    best: tuple[float, dict[str, float]] | None = None
    for step in range(steps + 1):
        share = step / steps
        ratios = {layer: share * greedy.ratios[layer] + (1 - share) * threshold.ratios[layer] for layer in table.layers}
        score = float(metric(apply_ratios(model, ratios)))
        if best is None or score > best[0]:
            best = (score, ratios)
    score, ratios = best
    return Allocation("search", target, budget, ratios, costs.cost(ratios), costs.dense, baseline - score)


def apply_ratios(model: nn.Module, ratios: dict[str, float]) -> nn.Module:
    """A copy of ``model`` with each layer's weight magnitude-pruned to its ratio (others untouched).

    Example::

        pruned = apply_ratios(model, {"conv2": 0.8, "fc1": 0.5})
    """
    overrides = {f"{layer}.weight": float(min(max(r, 0.0), 0.999)) for layer, r in ratios.items() if r > 0}
    pruned = copy.deepcopy(model)
    if not overrides:
        return pruned
    return prune_unstructured(pruned, 0.0, targets=list(overrides), overrides=overrides)


def measured_cost(model: nn.Module, example_inputs: ExampleInputs, layers: list[str], target: str = "macs") -> float:
    """The ``target`` cost of a (pruned) model, measured from its weights rather than predicted.

    Example::

        measured_cost(apply_ratios(model, allocation.ratios), torch.zeros(1, 1, 8, 8), layers, "macs")
    """
    summary = summarize(model, example_inputs)
    if target == "macs":
        return float(summary.sparse_macs)
    if target == "params":
        return float(summary.nonzeros)
    modules = dict(model.named_modules())
    total = float(sum(p.numel() * p.element_size() for p in model.parameters()))
    for layer in layers:
        weight = modules[layer].weight.detach()
        total += int(torch.count_nonzero(weight)) * weight.element_size() - weight.numel() * weight.element_size()
        total += weight.numel() / 8
    return total


def compare_allocations(model: nn.Module, table: SensitivityTable, metric: Callable[[nn.Module], float],
                        example_inputs: ExampleInputs, budget: float, target: str = "macs",
                        search_metric: Callable[[nn.Module], float] | None = None) -> list[dict[str, Any]]:
    """Sensitivity, uniform and global allocations at one budget: ratios, measured cost and ``metric`` of each.

    The measured cost comes from the pruned model itself (``summarize``), not from the cost model.
    With ``search_metric`` (validation data; keep ``metric`` for held-out test data) a fourth row,
    ``search``, comes from :func:`search_ratios`.

    Example::

        rows = compare_allocations(model, table, Accuracy(x_test, y_test), torch.zeros(1, 1, 8, 8), 0.3)
        allocation_table(rows).print()
    """
    layers = table.layers
    allocations = [allocate_ratios(table, model, example_inputs, budget, target),
                   uniform_ratios(model, example_inputs, layers, budget, target),
                   global_ratios(model, example_inputs, layers, budget, target)]
    if search_metric is not None:
        allocations.append(search_ratios(table, model, example_inputs, budget, search_metric, target))
    rows = []
    for allocation in allocations:
        pruned = apply_ratios(model, allocation.ratios)
        actual = measured_cost(pruned, example_inputs, layers, target)
        rows.append({"method": allocation.method, "target": target, "budget": budget, "ratios": allocation.ratios,
                     "cost": actual, "cost_fraction": actual / allocation.dense_cost, "metric": float(metric(pruned))})
    return rows


def allocation_table(rows: list[dict[str, Any]], title: str = "Allocation at the same budget") -> ResultTable:
    """The comparison as a table: method, cost vs budget, metric, and the per-layer ratios."""
    layers = list(rows[0]["ratios"]) if rows else []
    table = ResultTable(title, ["allocation", "cost / dense", "budget", "metric", *layers])
    for row in rows:
        table.add_row(row["method"], f"{row['cost_fraction']:.2%}", f"{row['budget']:.2%}", f"{row['metric']:.4f}",
                      *[f"{row['ratios'][layer]:.2f}" for layer in layers])
    return table
