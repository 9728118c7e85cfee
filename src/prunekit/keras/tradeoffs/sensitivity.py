"""Per-layer sensitivity of a Keras model: prune each layer alone at several ratios and measure a validation metric.

The twin of :mod:`prunekit.torch.tradeoffs.sensitivity`, giving the same framework-free
:class:`~prunekit.tradeoffs.budget.SensitivityTable`: the data a user reads to see which layers tolerate
pruning, and the input of :func:`~prunekit.keras.tradeoffs.allocation.allocate_ratios`. Each evaluation
prunes a copy of the model, the way a registered method would (its layer pruner); layers run one
after another in this process (TensorFlow already spreads each evaluation over the cores).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras

from prunekit.errors import ConfigError
from prunekit.keras.tradeoffs.allocation import apply_ratios, prunable_layers
from prunekit.methods import get_method
from prunekit.methods.accuracy import Accuracy as Accuracy  # one metric for both backends, re-exported here
from prunekit.tradeoffs.budget import SensitivityTable, check_ratios, evaluate_metric

Metric = Callable[[keras.Model], float]
LayerPruner = Callable[[keras.Model, str, float], keras.Model]


class MagnitudePruner:
    """The layer pruner of the unstructured methods: a copy with one layer's smallest weights zeroed.

    Example::

        table = analyze_sensitivity(model, metric, prune=MagnitudePruner())
    """

    def __init__(self, example_inputs: Any = None):
        self.example_inputs = example_inputs  # unused: magnitude needs no forward pass

    def __call__(self, model: keras.Model, layer: str, ratio: float) -> keras.Model:
        return apply_ratios(model, {layer: ratio} if ratio else {})

    def layers(self, model: keras.Model) -> list[str]:
        """The layers it can prune (those ``prune_low_magnitude`` prunes)."""
        return prunable_layers(model)


class ChannelPruner:
    """The layer pruner of channel removal: a smaller copy without ``ratio`` of one layer's filters/neurons/heads.

    Producers coupled to the layer (through Add, Multiply, ...) lose the same channels. Twin of
    :class:`prunekit.torch.tradeoffs.sensitivity.ChannelPruner`.

    Example::

        table = analyze_sensitivity(model, metric, prune=ChannelPruner())
    """

    def __init__(self, example_inputs: Any = None):
        self.example_inputs = example_inputs  # unused: Keras models carry their input shapes

    def __call__(self, model: keras.Model, layer: str, ratio: float) -> keras.Model:
        from prunekit.keras.structured.prune import channel_groups, prune_channels

        group = next((g for g in channel_groups(model) if layer in g.producers), None)
        if group is None:
            raise ConfigError(
                f"layer {layer!r} of model {model.name!r} has no removable channels; choose from {self.layers(model)}"
            )
        return prune_channels(model, ratio=ratio, layers=list(group.producers)).model

    def layers(self, model: keras.Model) -> list[str]:
        """One producer per channel group that has removable channels (a group's layers shrink together)."""
        from prunekit.keras.structured.prune import channel_groups

        return [group.producers[0] for group in channel_groups(model) if group.size]


def analyze_sensitivity(
    model: keras.Model,
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
    as ``prune_low_magnitude`` then ``strip_pruning`` would; filter removal for ``channels``), or by
    ``prune``, a callable ``(model, layer, ratio) -> model``; the default is magnitude. ``layers``
    default to those the pruner can prune. ``model``, a built Functional or Sequential model, is not
    modified. ``workers`` must be 1: layers are scored one after another in this process.

    Example::

        table = analyze_sensitivity(model, Accuracy(split.x_val, split.y_val), ratios=(0.5, 0.9))
        table.table().print()
    """
    ratios = check_ratios(ratios)
    if workers != 1:
        raise ConfigError(f"workers={workers!r}: Keras sensitivity scores layers in this process; pass workers=1")
    if method is not None and prune is not None:
        raise ConfigError("give either method= (a registered method's layer pruner) or prune= (your own), not both")
    if prune is None:
        prune = MagnitudePruner() if method is None else get_method(method).layer_pruner("keras", example_inputs)
    default = getattr(prune, "layers", None)
    known = default(model) if callable(default) else prunable_layers(model)
    layers = list(known if layers is None else layers)
    unknown = [layer for layer in layers if layer not in known]
    if unknown:
        raise ConfigError(f"layers {unknown} are not prunable layers of model {model.name!r}; prunable layers: {known}")
    if not layers:
        raise ConfigError(f"no layers to analyse; pass layers=[...] from the prunable layers {known}")
    baseline = evaluate_metric(metric, apply_ratios(model, {}), "the unpruned model")
    scores = {
        layer: [
            evaluate_metric(metric, prune(model, layer, ratio), f"layer {layer!r} pruned at ratio {ratio}") for ratio in ratios
        ]
        for layer in layers
    }
    return SensitivityTable(baseline, ratios, scores, metric_name)
