"""Greedy per-layer allocation of activation sparsity (after TEAL's greedy search).

A uniform target zeroes the same fraction of every layer's input, but layers differ in how much
that moves the model's output (a small model's attention inputs are far more sensitive than its
MLP down-projection inputs). :func:`layer_errors` measures, for each layer alone at each sparsity of
a grid, the relative squared error of the model's output on the calibration batches;
:func:`greedy_allocation` then raises, step by step, the sparsity of whichever layer adds the
least error per weight read it skips, until the parameter-weighted mean sparsity (the fraction of
weight columns skipped, which is what buys speed) reaches the target. Layer errors are assumed to
add up, which keeps the search to one pass per layer and grid point.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

#: Sparsities at which each layer's error is measured (0 is free: no error).
GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def output_tensor(output: Any) -> torch.Tensor:
    """The tensor a model's output is judged by: itself, its ``logits``, or its first tensor."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    values = output.values() if isinstance(output, Mapping) else output if isinstance(output, (tuple, list)) else ()
    for value in values:
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"cannot find a tensor in the model's output of type {type(output).__name__}")


def layer_errors(
    model: nn.Module,
    layers: Mapping[str, nn.Module],
    thresholds: Mapping[str, Sequence[float]],
    scales: Mapping[str, torch.Tensor | None],
    batches: Sequence[Any],
    run: Callable[[nn.Module, Any, int], Any],
) -> dict[str, list[float]]:
    """Per layer, the output error with 0 and with each of its ``thresholds`` applied to that layer alone:
    ``mean over batches of |y' - y|^2 / |y|^2``; inputs are scored by :func:`input_scores` with ``scales``."""
    with torch.no_grad():
        references = [output_tensor(run(model, batch, i)).float() for i, batch in enumerate(batches)]
        errors: dict[str, list[float]] = {}
        for name, layer in layers.items():
            errors[name] = [0.0]
            for threshold in thresholds[name]:
                handle = layer.register_forward_pre_hook(_zero_below(threshold, scales.get(name)))
                try:
                    total = 0.0
                    for i, (batch, reference) in enumerate(zip(batches, references)):
                        moved = output_tensor(run(model, batch, i)).float() - reference
                        total += float(moved.square().sum() / reference.square().sum().clamp_min(1e-30))
                finally:
                    handle.remove()
                errors[name].append(total / len(batches))
    return errors


def input_scores(x: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """The float score each input entry is thresholded on: ``|x|``, or ``|x| * scale`` along the last axis."""
    score = x.abs().float()
    return score if scale is None else score * scale


def _zero_below(threshold: float, scale: torch.Tensor | None) -> Callable[..., tuple[Any, ...]]:
    def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        return (torch.where(input_scores(x, scale) < threshold, torch.zeros((), dtype=x.dtype), x), *args[1:])

    return hook


def greedy_allocation(
    errors: Mapping[str, Sequence[float]], sizes: Mapping[str, int], target: float, grid: Sequence[float] = GRID
) -> dict[str, float]:
    """Per-layer sparsities whose ``sizes``-weighted mean is ``target``, chosen greedily by the least
    error added per weight skipped; ``errors[name][i]`` is the error at ``(0, *grid)[i]``."""
    levels = (0.0, *grid)
    step = dict.fromkeys(errors, 0)
    chosen = dict.fromkeys(errors, 0.0)
    budget = target * sum(sizes[name] for name in errors)
    skipped = 0.0

    def cost(name: str) -> float:
        i = step[name]
        return (errors[name][i + 1] - errors[name][i]) / (sizes[name] * (levels[i + 1] - levels[i]))

    while skipped < budget:
        open_layers = [name for name in errors if step[name] + 1 < len(levels)]
        if not open_layers:
            break
        best = min(open_layers, key=cost)
        i = step[best]
        gain = sizes[best] * (levels[i + 1] - levels[i])
        if skipped + gain >= budget:  # the last step only as far as the budget: the mean lands on the target
            chosen[best] = levels[i] + (budget - skipped) / sizes[best]
            break
        step[best] += 1
        chosen[best] = levels[i + 1]
        skipped += gain
    return chosen
