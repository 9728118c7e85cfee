"""The three pruning-aware training modes as one call each: one-shot, iterative and gradual.

Each prunes ``model`` **in place** with a :class:`Pruner`, fine-tunes it with :func:`fit`, strips
the pruner and returns the plain model (the same object) with its training history. When a run
fails (an exception, Ctrl-C), ``model`` is rolled back to exactly what it was before the call
(:func:`~prunekit.torch.rollback.rollback_on_error`); pass ``copy.deepcopy(model)`` to keep the
original whatever happens. Use them as they are, or
read them as recipes for your own loop: each is a schedule plus a pruner plus a loop.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from prunekit.errors import ConfigError
from prunekit.methods.contract import PruningRun
from prunekit.schedules import ConstantSparsity, PruningSchedule, gradual_schedule, iterative_schedule
from prunekit.torch.rollback import rollback_on_error
from prunekit.torch.training import fit
from prunekit.torch.unstructured.pruner import Pruner


def _steps_per_epoch(loader: Iterable) -> int:
    try:
        steps = len(loader)
    except TypeError:
        raise ConfigError(
            "the workflows need a loader with a length (steps per epoch); use fit() with your own schedule"
        ) from None
    if steps == 0:
        raise ConfigError("train_loader yields no batches")
    return steps


def _run(
    model: nn.Module,
    loader: Iterable,
    schedule: PruningSchedule,
    epochs: int,
    lr: float,
    fit_options: dict[str, Any],
    pruner_options: dict[str, Any],
    prune_first: bool = False,
) -> PruningRun:
    pruner = Pruner(model, schedule, **pruner_options)
    with rollback_on_error(model):
        if prune_first:
            pruner.prune()
        history = fit(model, loader, epochs=epochs, lr=lr, pruner=pruner, **fit_options)
        pruned = list(pruner.params.values())
        zeros = sum(int((p == 0).sum()) for p in pruned)
        total = sum(p.numel() for p in pruned)
        pruner.strip()
    return PruningRun(model, schedule, history, zeros / total)


def _split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    fit_keys = {"weight_decay", "loss_fn", "val_loader", "device", "progress", "description", "callbacks", "checkpoint"}
    fit_options = {k: v for k, v in options.items() if k in fit_keys}
    return fit_options, {k: v for k, v in options.items() if k not in fit_keys}


def prune_one_shot(
    model: nn.Module, train_loader: Iterable, sparsity: float, *, finetune_epochs: int = 3, lr: float = 1e-4, **options: Any
) -> PruningRun:
    """Prune once to ``sparsity``, then fine-tune at a low learning rate with the masks held.

    ``options`` go to :class:`Pruner` (scope, pattern, importance, targets, ...) or to
    :func:`fit` (val_loader, device, progress, weight_decay, loss_fn).

    Example::

        run = prune_one_shot(model, loader, 0.8, finetune_epochs=3, scope="global")
    """
    fit_options, pruner_options = _split_options(options)
    schedule = ConstantSparsity(sparsity, begin_step=0, end_step=0, frequency=1)
    return _run(model, train_loader, schedule, finetune_epochs, lr, fit_options, pruner_options, prune_first=True)


def prune_iteratively(
    model: nn.Module,
    train_loader: Iterable,
    sparsity: float,
    *,
    rounds: int = 3,
    epochs_per_round: int = 2,
    lr: float = 1e-4,
    **options: Any,
) -> PruningRun:
    """Prune, retrain ``epochs_per_round``, repeat ``rounds`` times until ``sparsity`` is reached.

    Each round removes the same fraction of the weights still alive (1 - (1 - s)^(r/rounds)).

    Example::

        run = prune_iteratively(model, loader, 0.9, rounds=3, epochs_per_round=2)
    """
    fit_options, pruner_options = _split_options(options)
    if not isinstance(epochs_per_round, int) or epochs_per_round < 1:
        raise ConfigError(f"epochs_per_round should be an integer >= 1, got {epochs_per_round!r}")
    schedule = iterative_schedule(sparsity, rounds, epochs_per_round * _steps_per_epoch(train_loader))
    return _run(model, train_loader, schedule, rounds * epochs_per_round, lr, fit_options, pruner_options)


def prune_gradually(
    model: nn.Module,
    train_loader: Iterable,
    sparsity: float,
    *,
    epochs: int = 10,
    pruning_epochs: int | None = None,
    frequency: int | None = None,
    initial_sparsity: float = 0.0,
    power: float = 3,
    lr: float = 1e-4,
    **options: Any,
) -> PruningRun:
    """Raise sparsity every ``frequency`` steps along a polynomial over ``pruning_epochs``, then fine-tune.

    ``pruning_epochs`` defaults to two thirds of ``epochs``; ``frequency`` to a tenth of an
    epoch's steps. The pruning window is rounded up to whole multiples of ``frequency`` so the
    final sparsity is reached exactly.

    Example::

        run = prune_gradually(model, loader, 0.9, epochs=12, lr=5e-4)
    """
    fit_options, pruner_options = _split_options(options)
    schedule = gradual_schedule(
        sparsity, epochs, _steps_per_epoch(train_loader), pruning_epochs, frequency, initial_sparsity, power
    )
    return _run(model, train_loader, schedule, epochs, lr, fit_options, pruner_options)
