"""Run a training-kind method by name: the one call every front end uses."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from prunekit.errors import ConfigError
from prunekit.methods.contract import PruningRun, TrainJob
from prunekit.methods.record import FRAMEWORKS
from prunekit.methods.recover import RecoverJob, RecoveryRun
from prunekit.methods.registry import get_method

TRAINING_KINDS = ("unstructured", "structured", "dynamic")


def run_method(
    name: str,
    framework: str,
    model: Any,
    x: Any,
    y: Any,
    amount: float,
    *,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
    description: str = "",
    device: str | None = None,
    checkpoint: Any = None,
    **options: Any,
) -> PruningRun:
    """Prune ``model`` by ``amount`` with the method ``name`` on ``framework``, training on ``(x, y)``.

    ``options`` override the method's defaults (unknown names are an error listing the known ones).
    ``checkpoint`` is handed to the handler (see :attr:`TrainJob.checkpoint`).

    Example::

        run = run_method("gradual", "torch", model, split.x_train, split.y_train, 0.8, epochs=4)
        run.model, run.sparsity
    """
    method = get_method(name, kind=TRAINING_KINDS, framework=framework)
    job = TrainJob(
        model,
        x,
        y,
        amount,
        method.options(framework, **options),
        seed=seed,
        batch_size=batch_size,
        progress=progress,
        description=description or f"{method.name} {amount:.0%}",
        device=device,
        checkpoint=checkpoint,
    )
    run = method.handler(framework)(job)
    if not isinstance(run, PruningRun):
        raise TypeError(
            f"the {framework} handler of method {method.name!r} returned {type(run).__name__}, not a prunekit.methods.PruningRun"
        )
    return run


def load_backend(framework: str) -> ModuleType:
    """The backend module of ``framework`` (``prunekit.torch.backend`` or ``prunekit.keras.backend``): the contract's
    verbs (fit, accuracy, measure, summarize, measure_latency, export, clone, load_weights, analyze_sensitivity).

    Example::

        backend = load_backend("keras")
        backend.accuracy(model, split.x_test, split.y_test)
    """
    if framework not in FRAMEWORKS:
        raise ConfigError(f"framework should be one of {list(FRAMEWORKS)}, got {framework!r}")
    return importlib.import_module(f"prunekit.{framework}.backend")


def run_recovery(
    name: str,
    framework: str,
    model: Any,
    x: Any,
    y: Any,
    *,
    teacher: Any = None,
    export_path: str | None = None,
    calibration: Any = None,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
    device: str | None = None,
    **options: Any,
) -> RecoveryRun:
    """Recover a pruned ``model`` with the ``recover``-kind method ``name`` (fine-tune, distil from ``teacher``,
    QAT/PQAT writing an int8 artifact to ``export_path``), training on ``(x, y)``.

    Example::

        run = run_recovery("distill", "torch", pruned, split.x_train, split.y_train, teacher=dense, epochs=2)
    """
    method = get_method(name, kind="recover", framework=framework)
    job = RecoverJob(
        model,
        x,
        y,
        method.options(framework, **options),
        teacher=teacher,
        calibration=calibration,
        export_path=export_path,
        seed=seed,
        batch_size=batch_size,
        progress=progress,
        device=device,
    )
    run = method.handler(framework)(job)
    if not isinstance(run, RecoveryRun):
        raise TypeError(
            f"the {framework} handler of method {method.name!r} returned {type(run).__name__}, "
            "not a prunekit.methods.recover.RecoveryRun"
        )
    return run
