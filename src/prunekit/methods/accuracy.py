"""One top-1 accuracy metric for both backends: arrays in, a fraction out, picklable for worker processes.

The metric holds numpy arrays and asks the model's backend (:func:`backend_of`) for its outputs in
batches, so ``prunekit.torch.Accuracy`` and ``prunekit.keras.Accuracy`` are this one class.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

import numpy as np

from prunekit.errors import ConfigError
from prunekit.methods.record import FRAMEWORKS
from prunekit.methods.run import load_backend


def backend_of(model: Any) -> ModuleType:
    """The backend module whose ``is_model`` accepts ``model``; only frameworks already imported are
    asked (a model's own framework always is), so a PyTorch model never imports TensorFlow."""
    for framework in FRAMEWORKS:
        if framework in sys.modules:
            backend = load_backend(framework)
            if backend.is_model(model):
                return backend
    raise ConfigError(
        f"{type(model).__name__} is not a model of any backend ({', '.join(FRAMEWORKS)}): pass a torch nn.Module or a keras.Model"
    )


class Accuracy:
    """A picklable metric: top-1 accuracy of a classifier (logits or probabilities) on arrays ``(x, y)``, in [0, 1].

    Example::

        metric = Accuracy(split.x_val, split.y_val)
        metric(model)  # 0.97, for a PyTorch or a Keras model
    """

    def __init__(self, x: Any, y: Any, batch_size: int = 256):
        self.x = np.asarray(x)
        self.y = np.asarray(y)
        if len(self.x) != len(self.y) or len(self.x) == 0:
            raise ConfigError(f"Accuracy needs as many labels as samples (and at least one), got {len(self.x)} and {len(self.y)}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size should be an integer >= 1, got {batch_size!r}")
        self.batch_size = batch_size

    def __call__(self, model: Any) -> float:
        backend = backend_of(model)
        correct = 0
        for start in range(0, len(self.x), self.batch_size):
            outputs = backend.predict(model, self.x[start : start + self.batch_size])
            correct += int((outputs.argmax(axis=-1) == self.y[start : start + self.batch_size]).sum())
        return correct / len(self.x)
