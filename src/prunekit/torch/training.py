"""A small training loop and evaluation, plus the callback that drives a pruner from any loop."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunekit.core.progress import progress as progress_bar
from prunekit.errors import ConfigError
from prunekit.torch.unstructured.pruner import Pruner


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_loader(
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    batch_size: int = 64,
    shuffle: bool = True,
    seed: int = 0,
) -> DataLoader:
    """A ``DataLoader`` over arrays, shuffled by a seeded generator so runs repeat exactly.

    Example::

        loader = make_loader(split.x_train, split.y_train, batch_size=64)
    """
    if len(x) != len(y):
        raise ConfigError(f"x has {len(x)} samples but y has {len(y)}")
    if len(x) == 0:
        raise ConfigError("cannot build a loader over an empty dataset")
    dataset = TensorDataset(torch.as_tensor(x), torch.as_tensor(y))
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device | str | None = None) -> float:
    """Top-1 accuracy of a classifier on ``loader`` (batches of ``(inputs, labels)``), in [0, 1].

    Example::

        accuracy = evaluate(model, make_loader(split.x_test, split.y_test, shuffle=False))
    """
    device = torch.device(device) if device is not None else _model_device(model)
    was_training = model.training
    model.eval()
    correct = total = 0
    for inputs, labels in loader:
        logits = model(inputs.to(device))
        correct += int((logits.argmax(dim=1).cpu() == labels).sum())
        total += len(labels)
    model.train(was_training)
    if total == 0:
        raise ConfigError("evaluate got an empty loader")
    return correct / total


class PruningCallback:
    """Drives a :class:`Pruner` from a callback-style loop (Lightning, Keras-like or your own).

    ``on_train_batch_end`` advances the pruner once per optimizer step; ``on_train_end``
    strips it when ``strip_at_end`` is set. Extra positional/keyword arguments are ignored, so
    it plugs into Lightning's ``Callback`` hooks as they are.

    Example::

        callback = PruningCallback(pruner, strip_at_end=True)
        for batch in loader:
            ...; optimizer.step(); callback.on_train_batch_end()
        callback.on_train_end()
    """

    def __init__(self, pruner: Pruner, strip_at_end: bool = False):
        self.pruner = pruner
        self.strip_at_end = strip_at_end

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self.pruner.step()

    def on_train_end(self, *args: Any, **kwargs: Any) -> None:
        if self.strip_at_end:
            self.pruner.strip()


def fit(
    model: nn.Module,
    train_loader: Iterable,
    *,
    epochs: int,
    optimizer: torch.optim.Optimizer | None = None,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    pruner: Pruner | None = None,
    callbacks: Sequence[Any] = (),
    val_loader: Iterable | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    description: str = "train",
    checkpoint: Any = None,
) -> list[dict[str, float]]:
    """Train a classifier for ``epochs``; with a ``pruner``, step it after every optimizer step.

    Without ``optimizer``, Adam with ``lr`` and ``weight_decay`` is used. When ``fit`` creates
    the optimizer it attaches the pruner to it for the run (gradient and weight masking) and
    detaches it at the end. Returns one record per epoch: loss, seconds, and accuracies.
    ``checkpoint`` (a :class:`~prunekit.torch.checkpoint.EpochCheckpoint`) saves the run at epoch
    boundaries and resumes it, bitwise identically on CPU.

    Example::

        history = fit(model, loader, epochs=5, pruner=Pruner(model, PolynomialDecay(0, 0.8, 0, 100)))
    """
    if not isinstance(epochs, int) or epochs < 0:
        raise ConfigError(f"epochs should be an integer >= 0, got {epochs!r}")
    device = torch.device(device) if device is not None else _model_device(model)
    model.to(device)
    own_optimizer = optimizer is None
    if own_optimizer:
        optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        if pruner is not None:
            pruner.attach(optimizer)
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    history: list[dict[str, float]] = []
    start = 0
    if checkpoint is not None:
        start, history = checkpoint.restore(model, optimizer, pruner, train_loader, epochs=epochs, lr=lr)
    try:
        length = _length(train_loader)
        with progress_bar(description, None if length is None else (epochs - start) * length, enabled=progress) as advance:
            for epoch in range(start, epochs):
                model.train()
                started, total_loss, batches = time.perf_counter(), 0.0, 0
                for inputs, labels in train_loader:
                    optimizer.zero_grad(set_to_none=True)
                    loss = loss_fn(model(inputs.to(device)), labels.to(device))
                    loss.backward()
                    optimizer.step()
                    if pruner is not None:
                        pruner.step()
                    for callback in callbacks:
                        callback.on_train_batch_end()
                    total_loss += float(loss.detach())
                    batches += 1
                    advance()
                record = {"epoch": epoch + 1, "loss": total_loss / max(batches, 1), "seconds": time.perf_counter() - started}
                if val_loader is not None:
                    record["val_accuracy"] = evaluate(model, val_loader, device)
                history.append(record)
                if checkpoint is not None:
                    checkpoint.save(epoch + 1, model, optimizer, pruner, train_loader, history, epochs=epochs, lr=lr)
        if pruner is not None and not pruner.stripped:
            pruner.check_target(f"fit({description!r})")
        for callback in callbacks:
            if hasattr(callback, "on_train_end"):
                callback.on_train_end()
        if checkpoint is not None:
            checkpoint.finish()
    finally:
        if own_optimizer and pruner is not None and not pruner.stripped:
            pruner.detach()
    return history


def _length(loader: Iterable) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None
