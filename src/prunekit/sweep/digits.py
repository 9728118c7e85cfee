"""The built-in sweep objective: prune a trained digits CNN by a method at a sparsity, fine-tune, measure.

A trial's method is any PyTorch training method of the registry (``prunekit methods`` lists them),
run with its defaults and the objective's fine-tuning epochs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from prunekit.data import DatasetSplit, load_digits
from prunekit.errors import ConfigError
from prunekit.methods import TRAINING_KINDS, get_method, run_method, run_recovery
from prunekit.sweep.runner import Trial
from prunekit.torch import backend
from prunekit.torch.measure.latency import measure_latency
from prunekit.torch.models import DigitsCNN
from prunekit.torch.training import fit, make_loader


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
        # the arrays travel with the objective (a few hundred KiB), so workers skip importing scikit-learn
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

    def fingerprint(self) -> dict[str, Any]:
        """Everything a trial's result depends on besides the trial (a resumed sweep reuses only matching trials)."""
        import hashlib

        digest = hashlib.sha256()
        for name in sorted(self.dense_state):
            digest.update(name.encode())
            digest.update(self.dense_state[name].numpy().tobytes())
        for name in ("x_train", "y_train", "x_test", "y_test"):
            digest.update(getattr(self.split, name).tobytes())
        return {
            "objective": "prunekit.sweep.digits.DigitsObjective",
            "finetune_epochs": self.finetune_epochs,
            "latency_repeats": self.latency_repeats,
            "seed": self.seed,
            "model_options": {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(self.model_options.items())},
            "weights_and_data_sha256": digest.hexdigest()[:16],
        }

    def dense_model(self) -> nn.Module:
        model = DigitsCNN(**self.model_options)
        model.load_state_dict(self.dense_state)
        return model

    def baseline(self) -> dict[str, float]:
        """The unpruned model's metrics (the sweep's dense row), measured like every trial."""
        torch.manual_seed(self.seed)
        return measure_model(self.dense_model(), self.split.x_test, self.split.y_test, self.latency_repeats)

    def __call__(self, trial: Trial) -> dict[str, float]:
        torch.manual_seed(self.seed + trial.seed)
        split = self.split
        method = get_method(trial.method, kind=TRAINING_KINDS, framework="torch")
        model = self.dense_model()
        if trial.sparsity > 0 or method.kind != "unstructured":  # channel removal fine-tunes at ratio 0 too
            model = run_method(
                method.name,
                "torch",
                model,
                split.x_train,
                split.y_train,
                trial.sparsity,
                seed=self.seed + trial.seed,
                device="cpu",
                epochs=self.finetune_epochs,
            ).model
        recover = trial.options.get("recover")
        if recover:
            model = run_recovery(
                recover,
                "torch",
                model,
                split.x_train,
                split.y_train,
                teacher=self.dense_model(),
                seed=self.seed + trial.seed,
                device="cpu",
                epochs=self.finetune_epochs,
            ).model
        return measure_model(model, split.x_test, split.y_test, self.latency_repeats)


def measure_model(model: nn.Module, x: Any, y: Any, latency_repeats: int = 5) -> dict[str, float]:
    """Accuracy on ``(x, y)`` and the size/MACs figures a sweep compares (DigitsCNN-shaped inputs).

    Example::

        measure_model(model, split.x_test, split.y_test)["sparse_macs"]
    """
    model = model.cpu().eval()
    metrics = {"accuracy": backend.accuracy(model, x, y), **backend.measure(model, x)}
    if latency_repeats > 0:
        timing = measure_latency(model, tuple(x.shape[1:]), (32,), devices=["cpu"], warmup=2, repeats=latency_repeats)
        metrics["latency_ms"] = timing[0].median_ms
    return metrics
