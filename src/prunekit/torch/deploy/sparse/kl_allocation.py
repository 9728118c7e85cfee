"""Per-layer activation sparsity allocated on the model's end-to-end output (``allocation="kl"``).

The layer-alone greedy (:mod:`~prunekit.torch.deploy.sparse.allocation`) measures each layer's
error with every other layer dense and assumes the errors add up. Here every measurement runs the
whole model at the allocation reached so far: the error is the KL divergence between the dense
and the sparse model's next-token distributions (or their softmax over the last axis for other
models) on the calibration batches. Each round tries one step more (``STEP``) on every layer, with
all the others at their current sparsity, and takes the layers that add the least KL per weight
column skipped until a ``CHUNK`` of the budget is spent; the last step stops exactly on the budget,
so the mean sparsity weighted by layer size (the share of weight reads skipped, which for a
Linear is also its share of multiply-adds) is the target. Interactions between layers (the first
block's error that every later block amplifies) are seen as they arise; the cost is
``rounds x layers`` forwards of the calibration batches (``rounds`` about ``target / CHUNK``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.torch.deploy.sparse.allocation import input_scores, output_tensor

#: How far one candidate move raises a layer's sparsity, and the most any layer gets.
STEP = 0.1
MAX_SPARSITY = 0.95
#: Share of the model's weights whose columns one round skips (the layers re-measured after each).
CHUNK = 0.05

Threshold = Callable[[str, float], float]


def kl_allocation(
    model: nn.Module,
    layers: Mapping[str, nn.Module],
    threshold: Threshold,
    scales: Mapping[str, torch.Tensor | None],
    batches: Sequence[Any],
    run: Callable[[nn.Module, Any, int], Any],
    target: float,
    *,
    step: float = STEP,
    chunk: float = CHUNK,
) -> tuple[dict[str, float], float]:
    """Per-layer sparsities whose weight-count-weighted mean is ``target``, grown greedily on the joint KL;
    also the KL of the calibration batches at the result. ``threshold(name, sparsity)`` is the layer's
    input-score threshold for that fraction (its calibrated quantile)."""
    sizes = {name: int(layer.weight.numel()) for name, layer in layers.items()}
    total = sum(sizes.values())
    budget = target * total
    level = dict.fromkeys(layers, 0.0)
    current = dict.fromkeys(layers, 0.0)
    handles = [layer.register_forward_pre_hook(_zero_below(current, name, scales.get(name))) for name, layer in layers.items()]
    try:
        with torch.no_grad():
            references = [F.log_softmax(output_tensor(run(model, batch, i)).float(), dim=-1) for i, batch in enumerate(batches)]

            def divergence() -> float:
                total_kl = 0.0
                for i, (batch, reference) in enumerate(zip(batches, references)):
                    sparse = F.log_softmax(output_tensor(run(model, batch, i)).float(), dim=-1)
                    total_kl += float(F.kl_div(sparse, reference, log_target=True, reduction="none").sum(-1).mean())
                return total_kl / len(batches)

            skipped, now = 0.0, 0.0
            while skipped < budget:
                costs = {}
                for name in (n for n in layers if level[n] < MAX_SPARSITY):
                    after = min(level[name] + step, MAX_SPARSITY)
                    current[name] = threshold(name, after)
                    costs[name] = (divergence() - now) / (sizes[name] * (after - level[name]))
                    current[name] = threshold(name, level[name]) if level[name] > 0 else 0.0
                if not costs:
                    break
                spent = 0.0
                for name in sorted(costs, key=costs.__getitem__):
                    gain = sizes[name] * (min(level[name] + step, MAX_SPARSITY) - level[name])
                    last = skipped + gain >= budget
                    gain = budget - skipped if last else gain  # the last step only as far as the budget
                    level[name] += gain / sizes[name]
                    current[name] = threshold(name, level[name])
                    skipped, spent = (budget if last else skipped + gain), spent + gain
                    if last or spent >= chunk * total:
                        break
                now = divergence()
    finally:
        for handle in handles:
            handle.remove()
    return level, now


def _zero_below(current: Mapping[str, float], name: str, scale: torch.Tensor | None) -> Callable[..., Any]:
    """A pre-hook zeroing the inputs scored below ``current[name]`` (read at each call, so the search moves it)."""

    def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        threshold = current[name]
        if threshold <= 0:
            return None
        x = args[0]
        return (torch.where(input_scores(x, scale) < threshold, torch.zeros((), dtype=x.dtype), x), *args[1:])

    return hook
