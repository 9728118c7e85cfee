"""The built-in sweep objective: prune a trained digits CNN by a method at a sparsity, fine-tune, measure.

Methods: ``one-shot`` (global magnitude, then fine-tuning), ``layer`` (every layer to the same
sparsity, then fine-tuning), ``gradual`` (polynomial schedule during fine-tuning), ``iterative``
(prune and retrain in rounds), ``random`` (random importance: the baseline a criterion must
beat) and, when structured pruning is installed, ``channels`` (remove that fraction of channels).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from prunekit.data import DatasetSplit, load_digits
from prunekit.errors import ConfigError
from prunekit.sweep.runner import Trial
from prunekit.torch.latency import measure_latency
from prunekit.torch.metrics import serialized_size
from prunekit.torch.models import DigitsCNN
from prunekit.torch.sensitivity import Accuracy
from prunekit.torch.summary import summarize
from prunekit.torch.training import fit, make_loader
from prunekit.torch.workflows import prune_gradually, prune_iteratively, prune_one_shot

METHODS = ("one-shot", "layer", "gradual", "iterative", "random", "channels")


def structured_available() -> bool:
    """Whether ``prunekit.torch.prune_channels`` (structured pruning) can be imported."""
    try:
        from prunekit.torch.structured import prune_channels  # noqa: F401
    except ImportError:
        return False
    return True


class DigitsObjective:
    """A picklable sweep objective on the bundled digits: ``objective(trial) -> metrics``.

    Metrics: ``accuracy`` (test split), ``params``, ``nonzeros``, ``sparsity``, ``macs`` and
    ``sparse_macs`` per sample, ``raw_bytes``/``gzip_bytes`` of the state_dict and, with
    ``latency_repeats > 0``, ``latency_ms`` (median at batch 32, CPU).

    Example::

        objective = DigitsObjective.train(epochs=8)
        objective(Trial("one-shot", 0.8))["accuracy"]
    """

    def __init__(
        self,
        dense_state: dict[str, torch.Tensor],
        *,
        finetune_epochs: int = 2,
        latency_repeats: int = 5,
        seed: int = 0,
        model_options: dict[str, Any] | None = None,
        split: DatasetSplit | None = None,
    ):
        if not isinstance(finetune_epochs, int) or finetune_epochs < 1:
            raise ConfigError(f"finetune_epochs should be an integer >= 1, got {finetune_epochs!r}")
        self.dense_state = {k: v.detach().cpu().clone() for k, v in dense_state.items()}
        self.finetune_epochs = finetune_epochs
        self.latency_repeats = latency_repeats
        self.seed = seed
        self.model_options = dict(model_options or {})
        # the arrays travel with the objective (a few hundred KB), so workers skip importing scikit-learn
        self.split = split if split is not None else load_digits(seed=seed)

    @classmethod
    def train(
        cls, epochs: int = 8, seed: int = 0, model_options: dict[str, Any] | None = None, **options: Any
    ) -> DigitsObjective:
        """Train the dense ``DigitsCNN(**model_options)`` once (CPU, seeded); return the objective built on it."""
        torch.manual_seed(seed)
        split = load_digits(seed=seed)
        model = DigitsCNN(**(model_options or {}))
        fit(model, make_loader(split.x_train, split.y_train, seed=seed), epochs=epochs, lr=2e-3, progress=False, device="cpu")
        return cls(model.state_dict(), seed=seed, model_options=model_options, split=split, **options)

    def dense_model(self) -> nn.Module:
        model = DigitsCNN(**self.model_options)
        model.load_state_dict(self.dense_state)
        return model

    def _method(self, name: str) -> Callable[[nn.Module, Any, float], nn.Module]:
        epochs = self.finetune_epochs
        methods: dict[str, Callable[[nn.Module, Any, float], nn.Module]] = {
            "one-shot": lambda m, loader, s: (
                prune_one_shot(m, loader, s, finetune_epochs=epochs, lr=5e-4, scope="global", progress=False).model
            ),
            "layer": lambda m, loader, s: prune_one_shot(m, loader, s, finetune_epochs=epochs, lr=5e-4, progress=False).model,
            "gradual": lambda m, loader, s: (
                prune_gradually(m, loader, s, epochs=max(epochs, 2), lr=1e-3, scope="global", progress=False).model
            ),
            "iterative": lambda m, loader, s: (
                prune_iteratively(
                    m, loader, s, rounds=2, epochs_per_round=max(1, epochs // 2), lr=1e-3, scope="global", progress=False
                ).model
            ),
            "random": lambda m, loader, s: (
                prune_one_shot(m, loader, s, finetune_epochs=epochs, lr=5e-4, importance="random", progress=False).model
            ),
            "channels": self._channels,
        }
        if name not in methods:
            raise ConfigError(f"unknown sweep method {name!r}; choose from {list(methods)}")
        return methods[name]

    def _channels(self, model: nn.Module, loader: Any, ratio: float) -> nn.Module:
        try:
            from prunekit.torch.structured import prune_channels
        except ImportError as exc:
            raise ConfigError(f"method 'channels' needs structured pruning (prunekit.torch.prune_channels): {exc}") from None
        pruned = prune_channels(model, torch.zeros(1, 1, 8, 8), ratio).model if ratio > 0 else model
        fit(pruned, loader, epochs=self.finetune_epochs, lr=5e-4, progress=False, device="cpu")
        return pruned

    def __call__(self, trial: Trial) -> dict[str, float]:
        torch.manual_seed(self.seed + trial.seed)
        split = self.split
        loader = make_loader(split.x_train, split.y_train, seed=self.seed + trial.seed)
        prune = self._method(trial.method)
        model = (
            prune(self.dense_model(), loader, trial.sparsity)
            if trial.sparsity > 0 or trial.method == "channels"
            else self.dense_model()
        )
        return measure_model(model, split.x_test, split.y_test, self.latency_repeats)


def measure_model(model: nn.Module, x: Any, y: Any, latency_repeats: int = 5) -> dict[str, float]:
    """Accuracy on ``(x, y)`` and the size/MACs figures a sweep compares (DigitsCNN-shaped inputs).

    Example::

        measure_model(model, split.x_test, split.y_test)["sparse_macs"]
    """
    model = model.cpu().eval()
    summary = summarize(model, torch.zeros(1, *tuple(x.shape[1:])))
    sizes = serialized_size(model)
    metrics = {
        "accuracy": Accuracy(x, y)(model),
        "params": summary.params,
        "nonzeros": summary.nonzeros,
        "sparsity": summary.sparsity,
        "macs": summary.macs,
        "sparse_macs": summary.sparse_macs,
        "raw_bytes": sizes["raw_bytes"],
        "gzip_bytes": sizes["gzip_bytes"],
    }
    if latency_repeats > 0:
        timing = measure_latency(model, tuple(x.shape[1:]), (32,), devices=["cpu"], warmup=2, repeats=latency_repeats)
        metrics["latency_ms"] = timing[0].median_ms
    return metrics
