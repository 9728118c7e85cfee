"""Run a training-kind method by name: the one call every front end uses."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from prunekit.errors import ConfigError
from prunekit.methods.contract import PruningRun, TrainJob
from prunekit.methods.record import FRAMEWORKS
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
    **options: Any,
) -> PruningRun:
    """Prune ``model`` by ``amount`` with the method ``name`` on ``framework``, training on ``(x, y)``.

    ``options`` override the method's defaults (unknown names are an error listing the known ones).

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
