"""Per-layer sensitivity of a Keras model: prune each layer alone at several ratios and measure a validation metric.

The twin of :mod:`prunekit.torch.tradeoffs.sensitivity`, giving the same framework-free
:class:`~prunekit.tradeoffs.budget.SensitivityTable`: the data a user reads to see which layers tolerate
pruning, and the input of :func:`~prunekit.keras.tradeoffs.allocation.allocate_ratios`. Each evaluation
prunes a copy of the model (:func:`~prunekit.keras.tradeoffs.allocation.apply_ratios`); layers run one
after another in this process, with no ``workers`` option (TensorFlow already spreads each
evaluation over the cores).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np

from prunekit.errors import ConfigError
from prunekit.keras.tradeoffs.allocation import apply_ratios, prunable_layers
from prunekit.tradeoffs.budget import SensitivityTable, check_ratios, evaluate_metric

Metric = Callable[[keras.Model], float]


class Accuracy:
    """A metric: top-1 accuracy of a Keras classifier (logits or probabilities) on arrays ``(x, y)``, in [0, 1].

    Example::

        metric = Accuracy(split.x_val, split.y_val)
        metric(model)  # 0.97
    """

    def __init__(self, x: Any, y: Any, batch_size: int = 256):
        self.x = np.asarray(x)
        self.y = np.asarray(y)
        if len(self.x) != len(self.y) or len(self.x) == 0:
            raise ConfigError(f"Accuracy needs as many labels as samples (and at least one), got {len(self.x)} and {len(self.y)}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size should be an integer >= 1, got {batch_size!r}")
        self.batch_size = batch_size

    def __call__(self, model: keras.Model) -> float:
        correct = 0
        for start in range(0, len(self.x), self.batch_size):
            outputs = np.asarray(model(self.x[start : start + self.batch_size], training=False))
            correct += int((outputs.argmax(axis=-1) == self.y[start : start + self.batch_size]).sum())
        return correct / len(self.x)


def analyze_sensitivity(
    model: keras.Model,
    metric: Metric,
    ratios: Sequence[float] = (0.25, 0.5, 0.75, 0.9),
    *,
    layers: Sequence[str] | None = None,
    metric_name: str = "metric",
) -> SensitivityTable:
    """Prune each layer alone at each ratio (on a copy) and score it with ``metric`` (higher is better).

    ``metric`` is a callable ``(model) -> float`` such as :class:`Accuracy`; a layer is pruned as
    ``prune_low_magnitude`` then ``strip_pruning`` would at that sparsity (its kernel's smallest
    ``|w|`` set to zero). ``layers`` default to every prunable layer (:func:`prunable_layers`).
    ``model``, a built Functional or Sequential model, is not modified. There are no parallel
    workers: layers are scored one after another.

    Example::

        table = analyze_sensitivity(model, Accuracy(split.x_val, split.y_val), ratios=(0.5, 0.9))
        table.table().print()
    """
    ratios = check_ratios(ratios)
    known = prunable_layers(model)
    layers = list(known if layers is None else layers)
    unknown = [layer for layer in layers if layer not in known]
    if unknown:
        raise ConfigError(f"layers {unknown} are not prunable layers of model {model.name!r}; prunable layers: {known}")
    if not layers:
        raise ConfigError(f"no layers to analyse; pass layers=[...] from the prunable layers {known}")
    baseline = evaluate_metric(metric, apply_ratios(model, {}), "the unpruned model")
    scores = {
        layer: [
            evaluate_metric(metric, apply_ratios(model, {layer: ratio}), f"layer {layer!r} pruned at ratio {ratio}")
            for ratio in ratios
        ]
        for layer in layers
    }
    return SensitivityTable(baseline, ratios, scores, metric_name)
