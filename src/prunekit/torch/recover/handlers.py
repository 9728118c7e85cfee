"""The PyTorch handlers of the ``recover``-kind methods: ``handler(job: RecoverJob) -> RecoveryRun``.

See :mod:`prunekit.methods.recover` for the convention. Example::

    run = get_method("pqat").handler("torch")(RecoverJob(pruned, x, y, get_method("pqat").options("torch"), export_path="m.onnx"))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunekit.errors import ConfigError
from prunekit.methods.recover import RecoverJob, RecoveryRun
from prunekit.torch.recover.distill import distill
from prunekit.torch.recover.qat import qat
from prunekit.torch.training import fit, make_loader
from prunekit.torch.unstructured.pruner import Pruner


def _loader(job: RecoverJob) -> Any:
    return make_loader(job.x, job.y, batch_size=job.batch_size, seed=job.seed)


def _keep_zeros(job: RecoverJob) -> Pruner | None:
    """The pruned model's exact zeros held through training (an unstructured-pruned model stays as sparse)."""
    return Pruner.from_zeros(job.model)


def _release(pruner: Pruner | None) -> None:
    if pruner is not None and not pruner.stripped:
        pruner.strip()


def finetune_job(job: RecoverJob) -> RecoveryRun:
    """Plain fine-tuning with the task loss (the baseline the other recoveries are measured against); the
    model's exact zeros stay zero."""
    pruner = _keep_zeros(job)
    history = fit(
        job.model,
        _loader(job),
        epochs=job.options["epochs"],
        lr=job.options["lr"],
        pruner=pruner,
        device=job.device,
        progress=job.progress,
    )
    _release(pruner)
    return RecoveryRun(job.model, history)


def _features(features: Any) -> Any:
    """The ``features`` option as ``distill`` takes it: None for none, ``"penultimate"`` or a list of names."""
    if not features:
        return None
    return features if isinstance(features, str) else list(features)


def distill_job(job: RecoverJob) -> RecoveryRun:
    """Distil ``job.teacher`` into the pruned model (logits, plus ``features`` when given)."""
    if job.teacher is None:
        raise ConfigError("distillation needs job.teacher: the dense model the pruned one came from")
    options = job.options
    pruner = _keep_zeros(job)
    history = distill(
        job.model,
        job.teacher,
        _loader(job),
        epochs=options["epochs"],
        lr=options["lr"],
        temperature=options["temperature"],
        alpha=options["alpha"],
        features=_features(options["features"]),
        feature_weight=options["feature_weight"],
        feature_loss=options["feature_loss"],
        pruner=pruner,
        device=job.device,
        progress=job.progress,
    )
    _release(pruner)
    return RecoveryRun(job.model, history)


def _quantize(job: RecoverJob, masks: Any) -> RecoveryRun:
    options = job.options
    controller = qat(
        job.model,
        _loader(job),
        epochs=options["epochs"],
        lr=options["lr"],
        masks=masks,
        freeze_ranges_after=options.get("freeze_ranges_after"),
        freeze_bn_after=options.get("freeze_bn_after"),
        device=job.device,
        progress=job.progress,
    )
    artifact, zeros, sqnr = None, {}, None
    if job.export_path is not None:
        calibration = job.calibration if job.calibration is not None else job.x[:64]
        example = torch.as_tensor(np.asarray(calibration, dtype=np.float32))
        result = controller.export_onnx(example, Path(job.export_path))
        artifact, zeros, sqnr = result.path, result.zeros, result.sqnr_db
    float_layers = dict(controller.float_layers)
    model = controller.close()
    return RecoveryRun(model, controller.history, artifact, zeros, float_layers, sqnr)


def qat_job(job: RecoverJob) -> RecoveryRun:
    """Quantization-aware fine-tuning; with ``export_path``, the int8 QDQ ONNX file."""
    return _quantize(job, None)


def pqat_job(job: RecoverJob) -> RecoveryRun:
    """Sparsity-preserving QAT (``job.masks``, default: the model's exact zeros); with ``export_path``, the int8 ONNX."""
    from prunekit.torch.recover.qat import _masks_from

    masks = _masks_from(job.masks if job.masks is not None else "zeros", job.model)
    if not masks:
        raise ConfigError(f"PQAT found no pruning masks in {type(job.model).__name__}; prune first, or use plain QAT")
    return _quantize(job, masks)
