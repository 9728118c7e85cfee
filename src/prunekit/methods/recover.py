"""The calling convention of ``recover``-kind methods (``finetune``, ``distill``, ``qat``, ``pqat``).

A recover handler is ``handler(job: RecoverJob) -> RecoveryRun``: it trains ``job.model`` (a
pruned model of the handler's framework, modified in place) on ``job.x``/``job.y`` with
``job.options`` (the method's defaults merged with the caller's), learning from ``job.teacher``
(the dense model) when the method distils, and, for the quantizing methods, writes the int8
artifact to ``job.export_path`` (``.onnx`` for PyTorch, ``.tflite`` for Keras) calibrated on
``job.calibration`` (default: the first training samples). The handlers live in
``prunekit.torch.recover.handlers`` and ``prunekit.keras.recover.handlers``.

Example::

    method = get_method("distill")
    job = RecoverJob(pruned, split.x_train, split.y_train, method.options("torch", epochs=2), teacher=dense)
    run = method.handler("torch")(job)
    run.model, run.history
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RecoverJob:
    """The inputs of a recover-kind handler (see the module docstring).

    ``masks`` (``pqat``): the pruner or masks to keep; None keeps the model's exact zeros.
    """

    model: Any
    x: Any
    y: Any
    options: dict[str, Any]
    teacher: Any = None
    masks: Any = None
    calibration: Any = None
    export_path: str | Path | None = None
    seed: int = 0
    batch_size: int = 64
    progress: bool = False
    device: str | None = None


@dataclass
class RecoveryRun:
    """What a recover handler returns: the recovered plain model, per-epoch history, and for ``qat``/``pqat``
    the int8 artifact written (None without ``export_path``), its int8 zeros per weight, the layers
    left in float (name -> reason), and the SQNR of the int8 file against the fake-quant model when
    the backend measures it."""

    model: Any
    history: list[dict[str, float]] = field(default_factory=list)
    artifact: Path | None = None
    zeros: dict[str, int] = field(default_factory=dict)
    float_layers: dict[str, str] = field(default_factory=dict)
    sqnr_db: float | None = None
