"""One table per model: every layer's parameters, nonzeros, sparsity, dense MACs and sparse MACs.

Dense MACs come from :func:`~prunekit.torch.count_macs` (a dispatch trace). Sparse MACs scale a
layer's MACs by the density of its weights: what a sparse kernel would execute, and the budget
unstructured pruning reduces (structured pruning reduces the dense MACs themselves).
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.core.records import LayerStats, ModelSummary
from prunekit.torch.measure.macs import ExampleInputs, count_macs

__all__ = ["LayerStats", "ModelSummary", "summarize"]


def summarize(model: nn.Module, example_inputs: ExampleInputs) -> ModelSummary:
    """Per-layer parameters, nonzeros, MACs and sparse MACs of ``model`` on ``example_inputs``.

    A layer's sparse MACs are its MACs times the density of its ``weight`` (layers without a
    weight keep their MACs). MACs scale with the batch size of the example inputs.

    Example::

        summary = summarize(DigitsCNN(), torch.zeros(1, 1, 8, 8))
        summary.layer("conv2").macs   # 64 * 8 * 8 * 32 * 9 = 1179648
        summary.table().print()
    """
    report = count_macs(model, example_inputs)
    modules = dict(model.named_modules())
    layers = []
    for name, macs in report.per_layer.items():
        module = modules[name]
        seen_params = report.per_layer_params[name]
        own = [p for p in module.parameters(recurse=False)]
        nonzeros = sum(int(torch.count_nonzero(p.detach())) for p in own) if seen_params else 0
        weight = getattr(module, "weight", None)
        density = 1.0
        if isinstance(weight, torch.Tensor) and weight.numel():
            density = int(torch.count_nonzero(weight.detach())) / weight.numel()
        layers.append(
            LayerStats(
                name,
                report.layer_types[name],
                seen_params,
                min(nonzeros, seen_params) if seen_params else 0,
                macs,
                round(macs * density),
            )
        )
    return ModelSummary(layers)
