"""Per-layer pruning ratios for a budget, chosen from sensitivity data, beside uniform and global allocation.

The targets (``"macs"``, ``"params"``, ``"size"``), the linear cost model and the allocators are
framework-free, in :mod:`prunekit.tradeoffs.budget` (shared with :mod:`prunekit.keras.tradeoffs.allocation`); this
module measures a PyTorch model into them and prunes it. :func:`allocate_ratios` follows
:func:`~prunekit.tradeoffs.budget.greedy_path` from dense, each step (a layer to a higher measured ratio)
the one that costs the least metric per unit of budget saved, and ends the last step part-way so
the cost meets the budget exactly. :func:`uniform_ratios` gives every layer the same ratio and
:func:`global_ratios` one magnitude threshold across layers, both at the same budget. Latency is
not linear and zeroed weights do not lower it: channel removal with measured costs is in
:mod:`prunekit.torch.tradeoffs.structured_allocation`, on the same greedy path.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from prunekit.core.records import ModelSummary
from prunekit.errors import ConfigError
from prunekit.torch.measure.macs import ExampleInputs
from prunekit.torch.measure.summary import summarize
from prunekit.torch.unstructured.pruner import prune_unstructured
from prunekit.tradeoffs.budget import (  # noqa: F401  (TARGETS, allocation_table, greedy_path: importable from here too)
    MAX_RATIO,
    TARGETS,
    Allocation,
    CostModel,
    LayerWeights,
    SensitivityTable,
    allocation_table,
    check_target,
    comparison_rows,
    greedy_path,
    linear_cost_model,
    measured_cost_of,
    sensitivity_allocation,
    threshold_allocation,
    uniform_allocation,
)

CHANNEL_REMOVAL = "prunekit.torch.tradeoffs.structured_allocation.allocate_channels"


def _weights(model: nn.Module, summary: ModelSummary, layers: list[str]) -> dict[str, LayerWeights]:
    modules = dict(model.named_modules())
    missing = [layer for layer in layers if not isinstance(getattr(modules.get(layer), "weight", None), torch.Tensor)]
    if missing:
        raise ConfigError(f"layers {missing} are not modules with a weight in the model")
    found = {}
    for layer in layers:
        weight = modules[layer].weight.detach()
        found[layer] = LayerWeights(
            weight.numel(), int(torch.count_nonzero(weight)), weight.element_size(), summary.layer(layer).macs
        )
    return found


def _parameter_bytes(model: nn.Module) -> float:
    return float(sum(p.numel() * p.element_size() for p in model.parameters()))


def cost_model(model: nn.Module, example_inputs: ExampleInputs, layers: list[str], target: str = "macs") -> CostModel:
    """How ``target`` depends on the ratios of ``layers`` (module names) of ``model``.

    Example::

        costs = cost_model(DigitsCNN(), torch.zeros(1, 1, 8, 8), ["conv1", "conv2", "fc1", "fc2"], "macs")
        costs.dense  # 1330432
    """
    check_target(target, CHANNEL_REMOVAL)
    summary = summarize(model, example_inputs)
    return linear_cost_model(summary, _weights(model, summary, layers), _parameter_bytes(model), target)


def allocate_ratios(
    table: SensitivityTable, model: nn.Module, example_inputs: ExampleInputs, budget: float, target: str = "macs"
) -> Allocation:
    """Choose per-layer ratios meeting ``budget`` (a fraction of the dense ``target``) with the least predicted drop.

    The ratios are the point of :func:`greedy_path` where the cost meets the budget exactly (the
    cost is linear in each layer's ratio, so the last step is taken part-way). The predicted drop
    is the sum of each layer's measured drop at its ratio (interpolated between measured ratios).
    An unreachable budget raises a ``ConfigError`` naming the closest achievable one; a latency
    budget needs channel removal: :func:`~prunekit.torch.tradeoffs.structured_allocation.allocate_channels`.

    Example::

        table = analyze_sensitivity(model, Accuracy(x_val, y_val), ratios=(0.5, 0.7, 0.9))
        allocation = allocate_ratios(table, model, torch.zeros(1, 1, 8, 8), budget=0.3, target="macs")
        pruned = apply_ratios(model, allocation.ratios)
    """
    return sensitivity_allocation(table, cost_model(model, example_inputs, table.layers, target), budget)


def uniform_ratios(
    model: nn.Module, example_inputs: ExampleInputs, layers: list[str], budget: float, target: str = "macs"
) -> Allocation:
    """The same ratio for every layer in ``layers``, chosen so the cost meets ``budget``.

    Example::

        uniform_ratios(model, torch.zeros(1, 1, 8, 8), ["conv1", "conv2", "fc1", "fc2"], 0.3).ratios
    """
    return uniform_allocation(cost_model(model, example_inputs, layers, target), budget)


def global_ratios(
    model: nn.Module, example_inputs: ExampleInputs, layers: list[str], budget: float, target: str = "macs"
) -> Allocation:
    """Per-layer ratios of one global magnitude threshold, found by bisection so the cost meets ``budget``.

    Example::

        global_ratios(model, torch.zeros(1, 1, 8, 8), ["conv1", "conv2", "fc1", "fc2"], 0.3).ratios
    """
    modules = dict(model.named_modules())
    magnitudes = {layer: modules[layer].weight.detach().abs().cpu().numpy() for layer in layers}
    return threshold_allocation(cost_model(model, example_inputs, layers, target), magnitudes, budget)


def search_ratios(
    table: SensitivityTable,
    model: nn.Module,
    example_inputs: ExampleInputs,
    budget: float,
    metric: Callable[[nn.Module], float],
    target: str = "macs",
    steps: int = 4,
) -> Allocation:
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
    overrides = {f"{layer}.weight": float(min(max(r, 0.0), MAX_RATIO)) for layer, r in ratios.items() if r > 0}
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
    return measured_cost_of(summary, _weights(model, summary, layers), _parameter_bytes(model), target)


def compare_allocations(
    model: nn.Module,
    table: SensitivityTable,
    metric: Callable[[nn.Module], float],
    example_inputs: ExampleInputs,
    budget: float,
    target: str = "macs",
    search_metric: Callable[[nn.Module], float] | None = None,
) -> list[dict[str, Any]]:
    """Sensitivity, uniform and global allocations at one budget: ratios, measured cost and ``metric`` of each.

    The measured cost comes from the pruned model itself (``summarize``), not from the cost model.
    With ``search_metric`` (validation data; keep ``metric`` for held-out test data) a fourth row,
    ``search``, comes from :func:`search_ratios`.

    Example::

        rows = compare_allocations(model, table, Accuracy(x_test, y_test), torch.zeros(1, 1, 8, 8), 0.3)
        allocation_table(rows).print()
    """
    layers = table.layers
    allocations = [
        allocate_ratios(table, model, example_inputs, budget, target),
        uniform_ratios(model, example_inputs, layers, budget, target),
        global_ratios(model, example_inputs, layers, budget, target),
    ]
    if search_metric is not None:
        allocations.append(search_ratios(table, model, example_inputs, budget, search_metric, target))
    return comparison_rows(
        allocations,
        lambda ratios: apply_ratios(model, ratios),
        lambda pruned: measured_cost(pruned, example_inputs, layers, target),
        metric,
    )
