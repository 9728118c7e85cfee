"""Per-layer pruning ratios of a Keras model for a budget, from sensitivity data, beside uniform and global allocation.

The twin of :mod:`prunekit.torch.tradeoffs.allocation`: the targets (``"macs"``, ``"params"``, ``"size"``),
the linear cost model and the allocators are the framework-free ones of :mod:`prunekit.tradeoffs.budget`;
this module measures a Keras model into them and prunes it. A layer's ratio prunes the weights
:func:`~prunekit.keras.prune_low_magnitude` prunes in it (the kernel of Dense and Conv layers) by
magnitude, each to exactly ``round(ratio * numel)`` zeros. Costs come from
:func:`prunekit.keras.measure.summary.summarize` (per sample; sparse MACs scale with the kernel's
density) and the trainable weights' bytes. Latency needs channel removal:
:func:`prunekit.keras.prune_channels`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np

from prunekit.core.records import ModelSummary
from prunekit.errors import ConfigError
from prunekit.keras.measure.summary import summarize
from prunekit.keras.unstructured.layers import iter_layers, prunable_weights, select_layers
from prunekit.keras.unstructured.pruning import _clone, _is_functional
from prunekit.masks import topk_mask
from prunekit.tradeoffs.budget import (
    MAX_RATIO,
    Allocation,
    CostModel,
    LayerWeights,
    SensitivityTable,
    check_target,
    comparison_rows,
    linear_cost_model,
    measured_cost_of,
    sensitivity_allocation,
    threshold_allocation,
    uniform_allocation,
)

CHANNEL_REMOVAL = "prunekit.keras.prune_channels, which removes whole filters and neurons"


def prunable_layers(model: keras.Model) -> list[str]:
    """Names of the layers whose weights :func:`~prunekit.keras.prune_low_magnitude` prunes (Dense, Conv*, ...).

    Example::

        prunable_layers(prunekit.keras.digits_cnn())  # ["conv1", "conv2", "fc1", "fc2"]
    """
    return [layer.name for layer, weights in select_layers(model).items() if weights]  # not weightless no-op layers


def _pruned_weights(model: keras.Model, layers: Sequence[str]) -> dict[str, list[Any]]:
    """Layer name -> the variables its ratio prunes; a ``ConfigError`` naming layers that have none."""
    found = {layer.name: layer for layer in iter_layers(model)}
    weights = {name: prunable_weights(found[name]) for name in layers if name in found}
    missing = [name for name in layers if not weights.get(name)]
    if missing:
        raise ConfigError(
            f"layers {missing} are not layers with prunable weights in model {model.name!r}; "
            f"prunable layers: {prunable_layers(model)}"
        )
    return weights


def _measure(model: keras.Model, layers: Sequence[str]) -> tuple[ModelSummary, dict[str, LayerWeights], float]:
    """The model's summary, what each of ``layers`` prunes, and the bytes of all its trainable weights."""
    weights = _pruned_weights(model, layers)
    summary = summarize(model)
    macs = {row.name.rsplit("/", 1)[-1]: row.macs for row in summary.layers}
    found = {layer.name: layer for layer in iter_layers(model)}
    measured = {}
    for name, variables in weights.items():
        arrays = [np.asarray(v.numpy()) for v in variables]
        scales = len(variables) == 1 and variables[0] is getattr(found[name], "kernel", None)  # sparse MACs follow the kernel
        measured[name] = LayerWeights(
            sum(a.size for a in arrays),
            sum(int(np.count_nonzero(a)) for a in arrays),
            arrays[0].itemsize,
            macs.get(name, 0) if scales else 0,
        )
    total = float(sum(math.prod(w.shape) * np.dtype(w.dtype).itemsize for w in model.trainable_weights))
    return summary, measured, total


def cost_model(model: keras.Model, layers: Sequence[str], target: str = "macs") -> CostModel:
    """How ``target`` depends on the ratios of ``layers`` (layer names) of a built Functional/Sequential ``model``.

    Example::

        costs = cost_model(prunekit.keras.digits_cnn(), ["conv1", "conv2", "fc1", "fc2"], "macs")
        costs.dense  # 1330432
    """
    check_target(target, CHANNEL_REMOVAL)
    return linear_cost_model(*_measure(model, layers), target)


def measured_cost(model: keras.Model, layers: Sequence[str], target: str = "macs") -> float:
    """The ``target`` cost of a (pruned) model, measured from its weights rather than predicted.

    Example::

        measured_cost(apply_ratios(model, allocation.ratios), list(allocation.ratios), "macs")
    """
    check_target(target, CHANNEL_REMOVAL)
    return measured_cost_of(*_measure(model, layers), target)


def apply_ratios(model: keras.Model, ratios: dict[str, float]) -> keras.Model:
    """A copy of ``model`` with each layer's prunable weights magnitude-pruned to its ratio (others untouched).

    The copy is a plain model, as :func:`~prunekit.keras.strip_pruning` returns: same layers,
    names and classes, exactly ``round(ratio * numel)`` smallest-``|w|`` entries zero per weight.

    Example::

        pruned = apply_ratios(model, {"conv2": 0.8, "fc1": 0.5})
    """
    if not (isinstance(model, keras.Sequential) or _is_functional(model)):
        raise ConfigError(
            f"model {getattr(model, 'name', model)!r} is a {type(model).__name__}; sensitivity and "
            "allocation work on Functional and Sequential models (costs come from their layer graph)"
        )
    pruned = _clone(model)
    for name, variables in _pruned_weights(pruned, [name for name, r in ratios.items() if r > 0]).items():
        ratio = float(min(ratios[name], MAX_RATIO))
        for variable in variables:
            values = np.asarray(variable.numpy())
            variable.assign(np.where(topk_mask(np.abs(values), ratio), values, np.zeros((), values.dtype)))
    return pruned


def allocate_ratios(table: SensitivityTable, model: keras.Model, budget: float, target: str = "macs") -> Allocation:
    """Choose per-layer ratios meeting ``budget`` (a fraction of the dense ``target``) with the least predicted drop.

    The same greedy allocation as :func:`prunekit.torch.allocate_ratios`
    (:func:`~prunekit.tradeoffs.budget.sensitivity_allocation`): the cost is linear in each layer's ratio,
    so the last step is taken part-way and the budget is met exactly. An unreachable budget
    raises a ``ConfigError`` naming the closest achievable one; a latency budget needs channel
    removal (:func:`prunekit.keras.prune_channels`).

    Example::

        table = analyze_sensitivity(model, Accuracy(split.x_val, split.y_val), ratios=(0.5, 0.7, 0.9))
        allocation = allocate_ratios(table, model, budget=0.3, target="macs")
        pruned = apply_ratios(model, allocation.ratios)
    """
    return sensitivity_allocation(table, cost_model(model, table.layers, target), budget)


def uniform_ratios(model: keras.Model, layers: Sequence[str], budget: float, target: str = "macs") -> Allocation:
    """The same ratio for every layer in ``layers``, chosen so the cost meets ``budget``.

    Example::

        uniform_ratios(model, ["conv1", "conv2", "fc1", "fc2"], 0.3).ratios
    """
    return uniform_allocation(cost_model(model, layers, target), budget)


def global_ratios(model: keras.Model, layers: Sequence[str], budget: float, target: str = "macs") -> Allocation:
    """Per-layer ratios of one global magnitude threshold, found by bisection so the cost meets ``budget``.

    Example::

        global_ratios(model, ["conv1", "conv2", "fc1", "fc2"], 0.3).ratios
    """
    magnitudes = {
        name: np.concatenate([np.abs(np.asarray(v.numpy())).ravel() for v in variables])
        for name, variables in _pruned_weights(model, layers).items()
    }
    return threshold_allocation(cost_model(model, layers, target), magnitudes, budget)


def compare_allocations(
    model: keras.Model, table: SensitivityTable, metric: Callable[[keras.Model], float], budget: float, target: str = "macs"
) -> list[dict[str, Any]]:
    """Sensitivity, uniform and global allocations at one budget: ratios, measured cost and ``metric`` of each.

    The measured cost comes from the pruned model itself (``summarize``), not from the cost model.
    Print the rows with :func:`~prunekit.tradeoffs.budget.allocation_table`.

    Example::

        rows = compare_allocations(model, table, Accuracy(split.x_test, split.y_test), budget=0.3)
        allocation_table(rows).print()
    """
    layers = table.layers
    allocations = [
        allocate_ratios(table, model, budget, target),
        uniform_ratios(model, layers, budget, target),
        global_ratios(model, layers, budget, target),
    ]
    return comparison_rows(
        allocations, lambda ratios: apply_ratios(model, ratios), lambda pruned: measured_cost(pruned, layers, target), metric
    )
