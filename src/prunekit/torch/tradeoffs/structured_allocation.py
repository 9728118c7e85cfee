"""Per-layer channel ratios for a budget on a measured cost: latency, or the MACs or parameters left.

Only removing channels makes dense kernels faster, so a latency budget is met by channel
removal (:func:`~prunekit.torch.prune_channels`). What channel removal saves is not linear in
the ratios (a layer's inputs shrink with the layer before it, and latency follows the kernels
rather than the MACs), so every cost here is measured on the physically smaller model, as a
fraction of the dense model's:

* ``"latency"``: :func:`~prunekit.torch.measure.latency.latency_ratio` against the dense model on
  ``example_inputs``, whose batch size is the one timed (pass the batch you deploy with);
* ``"macs"``, ``"params"``: MACs of one forward pass on ``example_inputs``, parameters;
* a callable ``(model) -> float``: any cost of your own (higher is costlier).

:func:`allocate_channels` orders the steps with :func:`~prunekit.torch.tradeoffs.allocation.greedy_path`,
each layer's saving measured once with that layer alone pruned, then bisects along the path,
measuring every candidate, for the least pruning whose cost meets the budget.
:func:`uniform_channels` bisects one ratio shared by every layer and :func:`global_channels`
one ratio of channels ranked across layers, for the side-by-side comparison of
:func:`compare_channel_allocations`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any, Union

import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.torch.measure.latency import latency_ratio
from prunekit.torch.measure.macs import ExampleInputs, count_macs, count_params
from prunekit.torch.structured.graph import analyze_dependencies
from prunekit.torch.structured.prune import prune_channels
from prunekit.tradeoffs.budget import Allocation, SensitivityTable, greedy_path

STRUCTURED_TARGETS = ("latency", "macs", "params")
Target = Union[str, Callable[[nn.Module], float]]
Candidate = tuple[dict[str, float], nn.Module, float]  # ratios, pruned model, measured cost fraction


def channel_layers(model: nn.Module, example_inputs: ExampleInputs, **graph_options: Any) -> list[str]:
    """One layer per group of channels :func:`prune_channels` can remove (the model's outputs are kept).

    These are the layers to analyse with :class:`~prunekit.torch.tradeoffs.sensitivity.ChannelPruner` and to
    allocate ratios to; ``graph_options`` go to ``analyze_dependencies`` (``leaf_modules``, ...).

    Example::

        channel_layers(DigitsCNN(), torch.zeros(1, 1, 8, 8))  # ["conv1", "conv2", "fc1"]
    """
    graph = analyze_dependencies(model, example_inputs, **graph_options)
    return [group.producers[0] for group in graph.groups if group.size >= 2 and group.producers]


def apply_channel_ratios(
    model: nn.Module, example_inputs: ExampleInputs, ratios: dict[str, float], **prune_options: Any
) -> nn.Module:
    """A smaller copy of ``model`` with ``ratios[layer]`` of each layer's output channels removed.

    ``prune_options`` go to :func:`prunekit.torch.prune_channels` (``importance``, ``round_to``, ...).

    Example::

        smaller = apply_channel_ratios(model, torch.zeros(1, 1, 8, 8), {"conv2": 0.5, "fc1": 0.25})
    """
    layer_ratios = {layer: float(r) for layer, r in ratios.items() if r > 0}
    if not layer_ratios:
        return copy.deepcopy(model)
    return prune_channels(model, example_inputs, 0.0, layer_ratios=layer_ratios, **prune_options).model


class _Meter:
    """The cost of pruned models as a fraction of the dense model's, and the dense cost in its own unit."""

    def __init__(self, model: nn.Module, example_inputs: ExampleInputs, target: Target, rounds: int):
        self.model, self.example_inputs, self.target, self.rounds = model, example_inputs, target, rounds
        if callable(target):
            self.name = getattr(target, "__name__", type(target).__name__)
        elif target in STRUCTURED_TARGETS:
            self.name = target
        else:
            raise ConfigError(
                f"target should be one of {STRUCTURED_TARGETS} or a callable (model) -> cost, got {target!r}; "
                "for file size remove weights instead: prunekit.torch.tradeoffs.allocation.allocate_ratios"
            )
        self.dense = self._absolute(model)
        if not math.isfinite(self.dense) or self.dense <= 0:
            raise ConfigError(f"the dense model's {self.name} is {self.dense!r}; a cost should be a positive number")

    def _absolute(self, model: nn.Module) -> float:
        if callable(self.target):
            value = self.target(model)
            return float(value.item() if isinstance(value, torch.Tensor) else value)
        if self.target == "macs":
            return float(count_macs(model, self.example_inputs).total)
        if self.target == "params":
            return float(count_params(model))
        return 1.0  # latency: measured relative to the dense model, see fraction

    def fraction(self, model: nn.Module) -> float:
        if self.target == "latency":
            return latency_ratio(model, self.model, self.example_inputs, rounds=self.rounds)
        return self._absolute(model) / self.dense


def _check_budget(budget: Any) -> float:
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget <= 1:
        raise ConfigError(f"budget should be a fraction of the dense cost in (0, 1], got {budget!r}")
    return float(budget)


def _check_layers(model: nn.Module, example_inputs: ExampleInputs, layers: list[str]) -> None:
    known = channel_layers(model, example_inputs)
    unknown = [layer for layer in layers if layer not in known]
    if unknown:
        raise ConfigError(
            f"layers {unknown} have no removable output channels (or are not one group's first layer); "
            f"use layers from channel_layers(model, example_inputs): {known}, and build the sensitivity "
            "table with prune=ChannelPruner(example_inputs)"
        )
    if not layers:
        raise ConfigError("no layers to allocate to; pass layers from channel_layers(model, example_inputs)")


def _bisect(
    candidate: Callable[[float], Candidate], high: float, budget: float, meter: _Meter, tolerance: float, steps: int
) -> Candidate:
    """The candidate with the least ``t`` in [0, high] whose measured cost fraction meets ``budget``."""
    if budget >= 1:
        return candidate(0.0)
    most = candidate(high)
    if most[2] > budget:
        raise ConfigError(
            f"a {meter.name} budget of {budget:.1%} of dense cannot be met: the closest achievable, with every layer at its "
            f"highest ratio, measured {most[2]:.1%} of dense; raise the budget or measure sensitivity at higher ratios"
        )
    low, best = 0.0, most
    for _ in range(steps):
        if best[2] >= budget - tolerance:
            break
        middle = (low + high) / 2
        found = candidate(middle)
        if found[2] <= budget:
            high, best = middle, found
        else:
            low = middle
    return best


_CHOSEN_HERE = ("ratio", "layer_ratios", "scope", "max_layer_ratio", "inplace")


def _check_search(tolerance: Any, steps: Any, max_ratio: Any, prune_options: dict[str, Any]) -> None:
    taken = sorted(set(prune_options) & set(_CHOSEN_HERE))
    if taken:
        raise ConfigError(
            f"prune_channels options {taken} are chosen by the allocator; pass only the others "
            "(importance, round_to, ignore_outputs, leaf_modules, ...)"
        )
    if isinstance(max_ratio, bool) or not isinstance(max_ratio, (int, float)) or not 0 < max_ratio < 1:
        raise ConfigError(f"max_ratio should be in (0, 1), got {max_ratio!r}")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance < 1:
        raise ConfigError(f"tolerance should be a fraction in [0, 1), got {tolerance!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps should be an integer >= 1, got {steps!r}")


def _result(
    method: str, meter: _Meter, budget: float, found: Candidate, drop: float | None = None
) -> tuple[Allocation, nn.Module]:
    ratios, pruned, fraction = found
    return Allocation(method, meter.name, budget, ratios, fraction * meter.dense, meter.dense, drop), pruned


def _sensitivity(
    table: SensitivityTable,
    example_inputs: ExampleInputs,
    budget: float,
    meter: _Meter,
    tolerance: float,
    steps: int,
    prune_options: dict[str, Any],
) -> tuple[Allocation, nn.Module]:
    model = meter.model
    saving: dict[str, dict[float, float]] = {}
    for layer in table.layers:  # each layer alone at each measured ratio; made monotone against timing noise
        saving[layer], best = {0.0: 0.0}, 0.0
        for ratio in table.ratios:
            alone = apply_channel_ratios(model, example_inputs, {layer: ratio}, **prune_options)
            best = saving[layer][ratio] = max(best, 1.0 - meter.fraction(alone))
    path = greedy_path(table, lambda layer, ratio: saving[layer][ratio])
    most = {layer: max(table.ratios) for layer in table.layers}
    if path[-1] != most:
        path.append(most)

    def candidate(t: float) -> Candidate:
        index = min(int(t), len(path) - 2)
        before, after = path[index], path[index + 1]
        ratios = {layer: before[layer] + (t - index) * (after[layer] - before[layer]) for layer in table.layers}
        pruned = apply_channel_ratios(model, example_inputs, ratios, **prune_options)
        return ratios, pruned, meter.fraction(pruned)

    found = _bisect(candidate, float(len(path) - 1), budget, meter, tolerance, steps + math.ceil(math.log2(len(path))))
    return _result("sensitivity", meter, budget, found, sum(table.interpolated_drop(layer, r) for layer, r in found[0].items()))


def _uniform(
    layers: list[str],
    example_inputs: ExampleInputs,
    budget: float,
    meter: _Meter,
    max_ratio: float,
    tolerance: float,
    steps: int,
    prune_options: dict[str, Any],
) -> tuple[Allocation, nn.Module]:
    def candidate(ratio: float) -> Candidate:
        ratios = {layer: ratio for layer in layers}
        pruned = apply_channel_ratios(meter.model, example_inputs, ratios, **prune_options)
        return ratios, pruned, meter.fraction(pruned)

    return _result("uniform", meter, budget, _bisect(candidate, max_ratio, budget, meter, tolerance, steps))


def _global(
    layers: list[str],
    example_inputs: ExampleInputs,
    budget: float,
    meter: _Meter,
    max_ratio: float,
    tolerance: float,
    steps: int,
    prune_options: dict[str, Any],
) -> tuple[Allocation, nn.Module]:
    options = dict(prune_options)
    kept = [layer for layer in channel_layers(meter.model, example_inputs) if layer not in layers]
    options["ignore_outputs"] = [*kept, *options.get("ignore_outputs", [])]

    def candidate(ratio: float) -> Candidate:
        result = prune_channels(meter.model, example_inputs, ratio, scope="global", max_layer_ratio=max_ratio, **options)
        achieved = {record.layers[0]: record.achieved_ratio for record in result.report.groups if record.layers}
        ratios = {layer: achieved.get(layer, 0.0) for layer in layers}
        return ratios, result.model, meter.fraction(result.model)

    return _result("global", meter, budget, _bisect(candidate, max_ratio, budget, meter, tolerance, steps))


def allocate_channels(
    table: SensitivityTable,
    model: nn.Module,
    example_inputs: ExampleInputs,
    budget: float,
    target: Target = "latency",
    *,
    tolerance: float = 0.02,
    steps: int = 6,
    rounds: int = 30,
    **prune_options: Any,
) -> Allocation:
    """Per-layer channel ratios whose measured ``target`` meets ``budget`` (a fraction of dense), least drop first.

    ``table`` comes from ``analyze_sensitivity(..., layers=channel_layers(model, example_inputs),
    prune=ChannelPruner(example_inputs))``. The search stops at the first candidate measured
    within ``tolerance`` below the budget, or after ``steps`` halvings per path segment. The
    allocation's ``cost`` is the chosen model's measured cost (for latency the dense cost is 1.0:
    ``cost`` is the latency ratio) and ``predicted_drop`` the sum of the layers' measured drops.
    ``rounds`` is how many alternate timings a latency measurement takes; ``prune_options`` go to
    ``prune_channels`` (``importance``, ``round_to``, ...). An unreachable budget raises a
    ``ConfigError`` with the closest achievable cost measured.

    Example::

        example = torch.zeros(64, 1, 8, 8)   # the batch size latency is measured at
        table = analyze_sensitivity(model, Accuracy(x_val, y_val), (0.25, 0.5, 0.75),
                                    layers=channel_layers(model, example), prune=ChannelPruner(example))
        allocation = allocate_channels(table, model, example, budget=0.5, target="latency")
        smaller = apply_channel_ratios(model, example, allocation.ratios)
    """
    budget = _check_budget(budget)
    _check_search(tolerance, steps, max(table.ratios), prune_options)
    _check_layers(model, example_inputs, table.layers)
    meter = _Meter(model, example_inputs, target, rounds)
    return _sensitivity(table, example_inputs, budget, meter, tolerance, steps, prune_options)[0]


def _one_ratio(
    search: Callable[..., tuple[Allocation, nn.Module]],
    model: nn.Module,
    example_inputs: ExampleInputs,
    layers: list[str],
    budget: float,
    target: Target,
    max_ratio: float,
    tolerance: float,
    steps: int,
    rounds: int,
    prune_options: dict[str, Any],
) -> Allocation:
    budget = _check_budget(budget)
    _check_search(tolerance, steps, max_ratio, prune_options)
    _check_layers(model, example_inputs, list(layers))
    meter = _Meter(model, example_inputs, target, rounds)
    return search(list(layers), example_inputs, budget, meter, max_ratio, tolerance, steps, prune_options)[0]


def uniform_channels(
    model: nn.Module,
    example_inputs: ExampleInputs,
    layers: list[str],
    budget: float,
    target: Target = "latency",
    *,
    max_ratio: float = 0.9,
    tolerance: float = 0.02,
    steps: int = 10,
    rounds: int = 30,
    **prune_options: Any,
) -> Allocation:
    """The same channel ratio for every layer in ``layers``, the least whose measured ``target`` meets ``budget``.

    Example::

        uniform_channels(model, torch.zeros(64, 1, 8, 8), ["conv1", "conv2", "fc1"], 0.5).ratios
    """
    return _one_ratio(_uniform, model, example_inputs, layers, budget, target, max_ratio, tolerance, steps, rounds, prune_options)


def global_channels(
    model: nn.Module,
    example_inputs: ExampleInputs,
    layers: list[str],
    budget: float,
    target: Target = "latency",
    *,
    max_ratio: float = 0.9,
    tolerance: float = 0.02,
    steps: int = 10,
    rounds: int = 30,
    **prune_options: Any,
) -> Allocation:
    """Channels of ``layers`` ranked together (L1, normalised per layer), the fewest removed that meet ``budget``.

    Example::

        global_channels(model, torch.zeros(64, 1, 8, 8), ["conv1", "conv2", "fc1"], 0.5).ratios
    """
    return _one_ratio(_global, model, example_inputs, layers, budget, target, max_ratio, tolerance, steps, rounds, prune_options)


def compare_channel_allocations(
    model: nn.Module,
    table: SensitivityTable,
    metric: Callable[[nn.Module], float],
    example_inputs: ExampleInputs,
    budget: float,
    target: Target = "latency",
    *,
    tolerance: float = 0.02,
    steps: int = 6,
    rounds: int = 30,
    **prune_options: Any,
) -> list[dict[str, Any]]:
    """Sensitivity, uniform and global channel allocations at one budget: ratios, measured cost and ``metric``.

    Rows have the keys of :func:`~prunekit.torch.tradeoffs.allocation.compare_allocations`, so
    :func:`~prunekit.torch.tradeoffs.allocation.allocation_table` prints them side by side. Uniform and
    global go up to the table's highest ratio, like the sensitivity allocation.

    Example::

        rows = compare_channel_allocations(model, table, Accuracy(x_test, y_test), torch.zeros(64, 1, 8, 8), 0.5)
        allocation_table(rows).print()
    """
    budget = _check_budget(budget)
    _check_search(tolerance, steps, max(table.ratios), prune_options)
    _check_layers(model, example_inputs, table.layers)
    meter = _Meter(model, example_inputs, target, rounds)
    top = max(table.ratios)
    results = [
        _sensitivity(table, example_inputs, budget, meter, tolerance, steps, prune_options),
        _uniform(table.layers, example_inputs, budget, meter, top, tolerance, steps + 4, prune_options),
        _global(table.layers, example_inputs, budget, meter, top, tolerance, steps + 4, prune_options),
    ]
    return [
        {
            "method": allocation.method,
            "target": allocation.target,
            "budget": budget,
            "ratios": allocation.ratios,
            "cost": allocation.cost,
            "cost_fraction": allocation.cost_fraction,
            "metric": float(metric(pruned)),
        }
        for allocation, pruned in results
    ]
