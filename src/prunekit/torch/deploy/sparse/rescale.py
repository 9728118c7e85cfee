"""One scale per activation-sparse layer that makes up for the energy its zeroed inputs carried.

Zeroing the small inputs of a layer shrinks its output on average: the kept part ``W x_kept``
points the same way as ``W x`` but is shorter. :func:`output_scales` fits, per layer, the scalar
``a`` minimising ``sum |W x - a W x_kept|^2`` over the calibration batches (the dense model's
inputs at the calibrated thresholds): ``a = <W x, W x_kept> / |W x_kept|^2``. The layer folds ``a``
into its weight, so the run-time kernels, and the columns they skip, are unchanged: it costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from prunekit.torch.deploy.sparse.allocation import input_scores


def output_scales(
    model: nn.Module,
    layers: Mapping[str, nn.Linear],
    thresholds: Mapping[str, float],
    scales: Mapping[str, torch.Tensor | None],
    batches: Sequence[Any],
    run: Callable[[nn.Module, Any, int], Any],
) -> dict[str, float]:
    """Per layer, the least-squares scale of its kept output onto its dense output (1.0 where nothing is zeroed)."""
    sums = {name: [0.0, 0.0] for name in layers}

    def hook(name: str, layer: nn.Linear) -> Callable[..., None]:
        def record(module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0].detach().float().reshape(-1, layer.in_features)
            kept = torch.where(input_scores(x, scales.get(name)) < thresholds[name], torch.zeros(()), x)
            weight = layer.weight.detach().float()
            dense, sparse = x @ weight.T, kept @ weight.T
            sums[name][0] += float((dense * sparse).sum())
            sums[name][1] += float(sparse.square().sum())

        return record

    active = {name: layer for name, layer in layers.items() if thresholds[name] > 0}
    handles = [layer.register_forward_pre_hook(hook(name, layer)) for name, layer in active.items()]
    try:
        with torch.no_grad():
            for i, batch in enumerate(batches):
                run(model, batch, i)
    finally:
        for handle in handles:
            handle.remove()
    return {name: sums[name][0] / sums[name][1] if name in active and sums[name][1] > 0 else 1.0 for name in layers}
