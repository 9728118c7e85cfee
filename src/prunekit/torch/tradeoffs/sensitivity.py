"""Per-layer sensitivity: prune each layer alone at several ratios and measure a validation metric.

The result is a layer × ratio table of scores (higher is better) next to the dense baseline:
the data a user reads to see which layers tolerate pruning, and the input of
:func:`~prunekit.torch.tradeoffs.allocation.allocate_ratios`. Layers are evaluated in parallel processes
with ``workers > 1``. The table itself, :class:`~prunekit.tradeoffs.budget.SensitivityTable`, is
framework-free and shared with :mod:`prunekit.keras.tradeoffs.sensitivity`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from prunekit.core.pool import run_jobs
from prunekit.errors import ConfigError, PrunekitError
from prunekit.methods import get_method
from prunekit.methods.accuracy import Accuracy as Accuracy  # one metric for both backends, re-exported here
from prunekit.torch.unstructured.pruner import prune_unstructured
from prunekit.torch.unstructured.selection import select_parameters
from prunekit.tradeoffs.budget import MetricError, SensitivityTable, check_ratios, evaluate_metric

Metric = Callable[[nn.Module], float]
LayerPruner = Callable[[nn.Module, str, float], nn.Module]


def prune_layer_unstructured(model: nn.Module, layer: str, ratio: float) -> nn.Module:
    """Zero the ``ratio`` smallest-magnitude weights of one layer (``layer`` is a module name), in place.

    Example::

        prune_layer_unstructured(model, "fc1", 0.5)
    """
    if ratio == 0:
        return model
    return prune_unstructured(model, ratio, targets=[f"{layer}.weight"])


class MagnitudePruner:
    """The layer pruner of the unstructured methods: zero one layer's smallest weights.

    What ``get_method("one-shot").layer_pruner("torch")`` gives; picklable, so it runs in workers.

    Example::

        table = analyze_sensitivity(model, metric, prune=MagnitudePruner())
    """

    def __init__(self, example_inputs: Any = None):
        self.example_inputs = example_inputs  # unused: magnitude needs no forward pass

    def __call__(self, model: nn.Module, layer: str, ratio: float) -> nn.Module:
        return prune_layer_unstructured(model, layer, ratio)

    def layers(self, model: nn.Module) -> list[str]:
        """The layers it can prune: every Linear, Conv and Embedding."""
        return prunable_layers(model)


class ChannelPruner:
    """A picklable structured layer pruner: remove ``ratio`` of one layer's output channels.

    Uses :func:`prunekit.torch.prune_channels` with ``layer_ratios={layer: ratio}`` (coupled
    layers shrink with it); the model's output channels stay. Pass it as ``prune=`` to
    :func:`analyze_sensitivity` to measure what channel removal costs per layer.

    Example::

        table = analyze_sensitivity(model, metric, prune=ChannelPruner(torch.zeros(1, 1, 8, 8)))
    """

    def __init__(self, example_inputs: Any):
        self.example_inputs = example_inputs

    def __call__(self, model: nn.Module, layer: str, ratio: float) -> nn.Module:
        from prunekit.torch.structured.prune import prune_channels

        if ratio == 0:
            return model
        return prune_channels(model, self.example_inputs, 0.0, layer_ratios={layer: ratio}).model

    def layers(self, model: nn.Module) -> list[str]:
        """The layers whose channels can be removed (not those feeding the model's output)."""
        from prunekit.torch.tradeoffs.structured_allocation import channel_layers

        return channel_layers(model, self.example_inputs)


def _layer_job(job: tuple[nn.Module, str, list[float], Metric, LayerPruner]) -> list[float]:
    model, layer, ratios, metric, prune = job
    scores = []
    for ratio in ratios:
        pruned = prune(copy.deepcopy(model), layer, ratio)
        scores.append(evaluate_metric(metric, pruned, f"layer {layer!r} pruned at ratio {ratio}"))
    return scores


def prunable_layers(model: nn.Module) -> list[str]:
    """Names of the modules whose weights prunekit prunes by default (Linear, Conv*, Embedding).

    Example::

        prunable_layers(DigitsCNN())  # ["conv1", "conv2", "fc1", "fc2"]
    """
    return [name.rsplit(".", 1)[0] if "." in name else "" for name in select_parameters(model, None, ())]


def analyze_sensitivity(
    model: nn.Module,
    metric: Metric,
    ratios: Sequence[float] = (0.25, 0.5, 0.75, 0.9),
    *,
    layers: Sequence[str] | None = None,
    method: str | None = None,
    prune: LayerPruner | None = None,
    example_inputs: Any = None,
    workers: int = 1,
    metric_name: str = "metric",
) -> SensitivityTable:
    """Prune each layer alone at each ratio (on a copy) and score it with ``metric`` (higher is better).

    ``metric`` is a callable ``(model) -> float`` such as :class:`Accuracy`. Each layer is pruned the
    way the registered ``method`` would (its layer pruner: magnitude for the unstructured methods,
    channel removal for ``channels``, which needs ``example_inputs``), or by ``prune``, a callable
    ``(model, layer, ratio) -> model``; the default is magnitude pruning of the layer's weight.
    ``layers`` default to those the pruner can prune. With ``workers > 1`` layers run in that many
    processes, so ``metric`` and ``prune`` must be picklable. ``model`` itself is not modified.

    Example::

        table = analyze_sensitivity(model, Accuracy(split.x_val, split.y_val), ratios=(0.5, 0.9))
        table = analyze_sensitivity(model, metric, method="channels", example_inputs=torch.zeros(1, 1, 8, 8))
        table.table().print()
    """
    ratios = check_ratios(ratios)
    if method is not None and prune is not None:
        raise ConfigError("give either method= (a registered method's layer pruner) or prune= (your own), not both")
    if prune is None:
        prune = MagnitudePruner() if method is None else get_method(method).layer_pruner("torch", example_inputs)
    known = prunable_layers(model)
    default = getattr(prune, "layers", None)
    layers = list((default(model) if callable(default) else known) if layers is None else layers)
    unknown = [layer for layer in layers if layer not in dict(model.named_modules())]
    if unknown:
        raise ConfigError(f"layers {unknown} are not modules of the model; prunable layers: {known}")
    if not layers:
        raise ConfigError("no layers to analyse: the model has no Linear/Conv/Embedding weights; pass layers=[...]")
    baseline = evaluate_metric(metric, copy.deepcopy(model), "the unpruned model")
    jobs = [(model, layer, ratios, metric, prune) for layer in layers]
    scores: dict[str, list[float]] = {}
    for index, result, error in run_jobs(_layer_job, jobs, workers):
        if error is not None:
            if isinstance(error, PrunekitError):
                raise error
            raise MetricError(f"sensitivity of layer {layers[index]!r} failed: {type(error).__name__}: {error}") from error
        scores[layers[index]] = result
    return SensitivityTable(baseline, ratios, {layer: scores[layer] for layer in layers}, metric_name)
