"""The three pruning-aware training modes as one call each, with ``model.fit``: one-shot, iterative, gradual.

Each clones and prunes ``model`` with :func:`prune_low_magnitude`, compiles and fits it with
:class:`UpdatePruningStep`, strips it and returns the plain model with its history (the twins of
``prunekit.torch.unstructured.workflows``). Read them as recipes: each is a schedule plus ``fit``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from prunekit.core.records import epoch_records
from prunekit.errors import ConfigError
from prunekit.keras.checkpoint import EpochCheckpoint
from prunekit.keras.unstructured.callbacks import UpdatePruningStep
from prunekit.keras.unstructured.pruning import prune_low_magnitude, strip_pruning
from prunekit.keras.unstructured.state import prunings
from prunekit.methods.contract import PruningRun
from prunekit.schedules import ConstantSparsity, PruningSchedule, gradual_schedule, iterative_schedule


def _steps_per_epoch(x: np.ndarray, batch_size: int) -> int:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size should be an integer >= 1, got {batch_size!r}")
    if len(x) == 0:
        raise ConfigError("the training data is empty")
    return math.ceil(len(x) / batch_size)


def _run(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    schedule: PruningSchedule,
    epochs: int,
    lr: float,
    batch_size: int,
    exclude: Sequence[str],
    callbacks: Sequence[Any],
    fit_options: dict[str, Any],
    checkpoint: EpochCheckpoint | None = None,
) -> PruningRun:
    pruned = prune_low_magnitude(model, pruning_schedule=schedule, exclude=exclude)
    pruned.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    # prunekit's schedules count from 0; a checkpointed run is one fit per epoch, so strip_pruning checks the target
    step = UpdatePruningStep(first_step=0, check_target=checkpoint is None)
    if checkpoint is None:
        fitted = pruned.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0, callbacks=[step, *callbacks], **fit_options)
        history = epoch_records(fitted.history)
    else:
        history = _fit_with_checkpoints(pruned, x, y, epochs, lr, batch_size, [step, *callbacks], fit_options, checkpoint)
    masks = [mask for state in prunings(pruned) for mask in state.mask_arrays().values()]
    sparsity = 1.0 - sum(int(m.sum()) for m in masks) / sum(m.size for m in masks)
    return PruningRun(strip_pruning(pruned), schedule, history, sparsity)


def _fit_with_checkpoints(
    pruned: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    epochs: int,
    lr: float,
    batch_size: int,
    callbacks: list[Any],
    fit_options: dict[str, Any],
    checkpoint: EpochCheckpoint,
) -> list[dict[str, float]]:
    """One ``fit`` epoch at a time on an order drawn here (so a resumed run sees the same batches), saving as due."""
    if "shuffle" in fit_options:
        raise ConfigError("with checkpoint= the workflow shuffles the data itself each epoch; drop shuffle=")
    order = np.random.default_rng(int(np.random.randint(2**31 - 1)))  # seeded by keras.utils.set_random_seed
    done, history = checkpoint.restore(pruned, order, epochs=epochs, lr=lr)
    for epoch in range(done, epochs):
        shuffled = order.permutation(len(x))
        fitted = pruned.fit(
            x[shuffled],
            y[shuffled],
            batch_size=batch_size,
            epochs=epoch + 1,
            initial_epoch=epoch,
            shuffle=False,
            verbose=0,
            callbacks=callbacks,
            **fit_options,
        )
        history += [dict(record, epoch=epoch + 1) for record in epoch_records(fitted.history)]
        checkpoint.save(epoch + 1, pruned, order, history, epochs=epochs, lr=lr)
    checkpoint.finish()
    return history


def prune_one_shot(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    sparsity: float,
    *,
    finetune_epochs: int = 3,
    lr: float = 1e-4,
    batch_size: int = 32,
    exclude: Sequence[str] = (),
    callbacks: Sequence[Any] = (),
    checkpoint: EpochCheckpoint | None = None,
    **fit_options: Any,
) -> PruningRun:
    """Prune once to ``sparsity`` at the first step, then fine-tune with the masks held.

    ``model`` is a trained Sequential/Functional classifier with logits output; it is not changed.

    Example::

        run = prune_one_shot(model, x_train, y_train, 0.8, finetune_epochs=3)
    """
    schedule = ConstantSparsity(sparsity, begin_step=0, end_step=0, frequency=1)
    return _run(model, x, y, schedule, finetune_epochs, lr, batch_size, exclude, callbacks, fit_options, checkpoint)


def prune_iteratively(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    sparsity: float,
    *,
    rounds: int = 3,
    epochs_per_round: int = 2,
    lr: float = 1e-4,
    batch_size: int = 32,
    exclude: Sequence[str] = (),
    callbacks: Sequence[Any] = (),
    checkpoint: EpochCheckpoint | None = None,
    **fit_options: Any,
) -> PruningRun:
    """Prune, retrain ``epochs_per_round``, repeat ``rounds`` times until ``sparsity`` is reached.

    Example::

        run = prune_iteratively(model, x_train, y_train, 0.9, rounds=3, epochs_per_round=2)
    """
    if not isinstance(epochs_per_round, int) or epochs_per_round < 1:
        raise ConfigError(f"epochs_per_round should be an integer >= 1, got {epochs_per_round!r}")
    schedule = iterative_schedule(sparsity, rounds, epochs_per_round * _steps_per_epoch(x, batch_size))
    return _run(model, x, y, schedule, rounds * epochs_per_round, lr, batch_size, exclude, callbacks, fit_options, checkpoint)


def prune_gradually(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    sparsity: float,
    *,
    epochs: int = 10,
    pruning_epochs: int | None = None,
    frequency: int | None = None,
    initial_sparsity: float = 0.0,
    power: float = 3,
    lr: float = 1e-4,
    batch_size: int = 32,
    exclude: Sequence[str] = (),
    callbacks: Sequence[Any] = (),
    checkpoint: EpochCheckpoint | None = None,
    **fit_options: Any,
) -> PruningRun:
    """Raise sparsity along a polynomial (Zhu & Gupta) over ``pruning_epochs``, then fine-tune.

    Example::

        run = prune_gradually(model, x_train, y_train, 0.9, epochs=12, lr=5e-4)
    """
    schedule = gradual_schedule(
        sparsity, epochs, _steps_per_epoch(x, batch_size), pruning_epochs, frequency, initial_sparsity, power
    )
    return _run(model, x, y, schedule, epochs, lr, batch_size, exclude, callbacks, fit_options, checkpoint)
