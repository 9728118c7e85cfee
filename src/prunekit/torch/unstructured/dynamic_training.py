"""Dynamic sparse training as one call: sparse from scratch (or gradually from dense), then SET/RigL regrowth.

:func:`train_sparse` builds a :class:`~prunekit.torch.unstructured.dynamic.DynamicPruner`, trains with
:func:`~prunekit.torch.fit`, strips the pruner and returns a :class:`PruningRun` whose per-epoch
history also says how many connections moved (``dropped``, ``regrown``) and the mask
``turnover`` at the epoch's end. :func:`rigl_job` and :func:`set_job` are the method registry's
handlers (kind ``"dynamic"``: ``handler(job: TrainJob) -> PruningRun``, see
:mod:`prunekit.methods.contract`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from prunekit.dynamic import RIGL, SET
from prunekit.errors import ConfigError
from prunekit.methods.contract import PruningRun, TrainJob
from prunekit.schedules import PolynomialDecay, PruningSchedule
from prunekit.torch._sharded import count_zeros
from prunekit.torch.rollback import rollback_on_error
from prunekit.torch.training import fit, make_loader
from prunekit.torch.unstructured.dynamic import DynamicPruner

_FIT_KEYS = {"weight_decay", "loss_fn", "val_loader", "device", "progress", "description", "callbacks", "checkpoint"}


def train_sparse(
    model: nn.Module,
    train_loader: Iterable,
    sparsity: float,
    *,
    regrow: str = RIGL,
    epochs: int = 12,
    lr: float = 1e-3,
    update_interval: int | None = None,
    drop_fraction: float = 0.3,
    end_fraction: float = 0.75,
    distribution: str = "uniform",
    gradual_epochs: int = 0,
    **options: Any,
) -> PruningRun:
    """Train ``model`` at ``sparsity`` with masks that move (SET or RigL) and return the stripped model.

    ``model`` is trained in place; if training fails it is rolled back to what it was before the call.

    With ``gradual_epochs=0`` the model is pruned (by magnitude) before the first step and trains
    sparse from scratch; otherwise sparsity rises along a cubic polynomial over ``gradual_epochs``
    (from a pretrained model, say) and regrowth follows. Updates run every ``update_interval``
    steps (default: half an epoch) until ``end_fraction`` of the training. ``options`` go to the
    pruner (scope, pattern, targets, ignore, seed) or to :func:`fit` (val_loader, device,
    progress, weight_decay, loss_fn, callbacks).

    Example::

        run = train_sparse(DigitsMLP(), make_loader(split.x_train, split.y_train), 0.95, regrow="rigl", epochs=30)
        run.history[-1]["turnover"]
    """
    try:
        steps_per_epoch = len(train_loader)
    except TypeError:
        raise ConfigError("train_sparse needs a loader with a length (steps per epoch)") from None
    if not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs should be an integer >= 1, got {epochs!r}")
    if not 0.0 < float(end_fraction) <= 1.0:
        raise ConfigError(f"end_fraction should be in (0, 1], the share of training with regrowth, got {end_fraction!r}")
    if not isinstance(gradual_epochs, int) or not 0 <= gradual_epochs < epochs:
        raise ConfigError(f"gradual_epochs should be an integer in [0, epochs={epochs}), got {gradual_epochs!r}")
    total = epochs * steps_per_epoch
    interval = update_interval or max(1, steps_per_epoch // 2)
    schedule: PruningSchedule | float = float(sparsity)
    if gradual_epochs:
        frequency = max(1, steps_per_epoch // 4)
        end = frequency * max(1, (gradual_epochs * steps_per_epoch) // frequency)
        schedule = PolynomialDecay(0.0, sparsity, begin_step=0, end_step=end, frequency=frequency)
    fit_options = {k: v for k, v in options.items() if k in _FIT_KEYS}
    pruner_options = {k: v for k, v in options.items() if k not in _FIT_KEYS}
    pruner = DynamicPruner(
        model,
        schedule,
        regrow=regrow,
        end_step=max(1, int(end_fraction * total)),
        update_interval=interval,
        drop_fraction=drop_fraction,
        distribution=distribution,
        **pruner_options,
    )
    with rollback_on_error(model):
        if not gradual_epochs:
            pruner.prune()
        history = fit(model, train_loader, epochs=epochs, lr=lr, pruner=pruner, **fit_options)
        _add_regrowth(history, pruner.history, steps_per_epoch)
        params = list(pruner.params.values())
        achieved = sum(count_zeros(p) for p in params) / sum(p.numel() for p in params)
        pruner.strip()
    return PruningRun(model, pruner.schedule, history, achieved)


def _add_regrowth(history: list[dict[str, Any]], updates: list[dict[str, Any]], steps_per_epoch: int) -> None:
    """Per epoch: connections dropped and regrown in it, and the turnover at its end."""
    turnover = 0.0
    for index, record in enumerate(history):
        inside = [u for u in updates if index * steps_per_epoch <= u["step"] < (index + 1) * steps_per_epoch]
        record["dropped"] = sum(sum(u["dropped"].values()) for u in inside)
        record["regrown"] = sum(sum(u["regrown"].values()) for u in inside)
        turnover = inside[-1]["turnover"] if inside else turnover
        record["turnover"] = turnover


def _job(job: TrainJob, regrow: str) -> PruningRun:
    options = dict(job.options)
    loader = make_loader(job.x, job.y, batch_size=job.batch_size, seed=job.seed)
    extra: dict[str, Any] = {"device": job.device} if job.device else {}
    if job.checkpoint is not None:
        extra["checkpoint"] = job.checkpoint
    return train_sparse(
        job.model,
        loader,
        job.amount,
        regrow=regrow,
        epochs=options["epochs"],
        lr=options["lr"],
        update_interval=options["update_interval"] or None,
        drop_fraction=options["drop_fraction"],
        end_fraction=options["end_fraction"],
        distribution=options["distribution"],
        gradual_epochs=options["gradual_epochs"],
        scope=options["scope"],
        exclude=list(options["exclude"]),
        seed=job.seed,
        progress=job.progress,
        description=job.description,
        **extra,
    )


def rigl_job(job: TrainJob) -> PruningRun:
    """Handler (kind ``"dynamic"``): :func:`train_sparse` with RigL regrowth."""
    return _job(job, RIGL)


def set_job(job: TrainJob) -> PruningRun:
    """Handler (kind ``"dynamic"``): :func:`train_sparse` with SET (random) regrowth."""
    return _job(job, SET)
