"""The Keras handlers of the ``recover``-kind methods: ``handler(job: RecoverJob) -> RecoveryRun``.

See :mod:`prunekit.methods.recover` for the convention. ``qat``/``pqat`` return the plain
stripped model (kernels on the int8 grid) and write the int8 TFLite file to ``export_path``.

Example::

    run = get_method("distill").handler("keras")(RecoverJob(pruned, x, y, get_method("distill").options("keras"), teacher=dense))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np

from prunekit.core.records import epoch_records
from prunekit.errors import ConfigError
from prunekit.keras.recover.distill import distill
from prunekit.keras.recover.qat import FREEZE_BN_AFTER, export_tflite, pqat, qat, strip_qat
from prunekit.methods.recover import RecoverJob, RecoveryRun


class KeepZeros(keras.callbacks.Callback):
    """Hold the exact zeros of ``model``'s kernels (a stripped pruned model) through more training: the zeros
    are read when training begins and restored after every batch, so the model ends as sparse as it began."""

    def __init__(self, model: keras.Model):
        super().__init__()
        self.student = model
        self.masks: list[tuple[Any, np.ndarray]] = []

    def on_train_begin(self, logs: Any = None) -> None:
        self.masks = []
        for weight in self.student.trainable_weights:
            values = np.asarray(weight.numpy())
            if values.ndim > 1 and (values == 0).any():
                self.masks.append((weight, (values != 0).astype(values.dtype)))

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        for weight, mask in self.masks:
            weight.assign(keras.ops.multiply(weight, mask))  # in the graph: no copy to numpy each batch


def finetune_job(job: RecoverJob) -> RecoveryRun:
    """Plain fine-tuning with the task loss; the model's exact zeros stay zero."""
    job.model.compile(
        optimizer=keras.optimizers.Adam(job.options["lr"]),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = job.model.fit(
        job.x, job.y, epochs=job.options["epochs"], batch_size=job.batch_size, verbose=0, callbacks=[KeepZeros(job.model)]
    )
    return RecoveryRun(job.model, epoch_records(history.history))


def distill_job(job: RecoverJob) -> RecoveryRun:
    """Distil ``job.teacher`` into the pruned model on ``keras.distillation``."""
    if job.teacher is None:
        raise ConfigError("distillation needs job.teacher: the dense model the pruned one came from")
    options = job.options
    if options["feature_loss"] != "mse" or isinstance(options["features"], str):
        raise ConfigError(
            "Keras distillation matches named layers by MSE (keras.distillation's FeatureDistillation): set "
            f"feature_loss='mse' (got {options['feature_loss']!r}) and features to a list of layer names "
            f"(got {options['features']!r}); 'penultimate' and the scale-free distances are PyTorch-only"
        )
    history = distill(
        job.model,
        job.teacher,
        job.x,
        job.y,
        epochs=options["epochs"],
        lr=options["lr"],
        batch_size=job.batch_size,
        temperature=options["temperature"],
        alpha=options["alpha"],
        features=list(options["features"]) or None,
        feature_weight=options["feature_weight"],
        callbacks=[KeepZeros(job.model)],
    )
    return RecoveryRun(job.model, epoch_records(history.history))


def _finish(job: RecoverJob, run: Any) -> RecoveryRun:
    artifact: Path | None = None
    zeros: dict[str, int] = {}
    if job.export_path is not None:
        calibration = job.calibration if job.calibration is not None else job.x[:200]
        _, zeros = export_tflite(run.model, calibration, job.export_path)
        artifact = Path(job.export_path)
    return RecoveryRun(strip_qat(run.model), run.history, artifact, zeros, dict(run.float_layers))


def _qat_options(job: RecoverJob) -> dict[str, Any]:
    options = job.options
    return {
        "epochs": options["epochs"],
        "lr": options["lr"],
        "batch_size": job.batch_size,
        "freeze_ranges_after": options.get("freeze_ranges_after"),
        "freeze_bn_after": options.get("freeze_bn_after", FREEZE_BN_AFTER),
    }


def qat_job(job: RecoverJob) -> RecoveryRun:
    """Quantization-aware fine-tuning; with ``export_path``, the int8 TFLite file."""
    return _finish(job, qat(job.model, job.x, job.y, **_qat_options(job)))


def pqat_job(job: RecoverJob) -> RecoveryRun:
    """Sparsity-preserving QAT (the model's exact zeros, or ``job.masks``: ``{layer: kernel mask}``)."""
    masks = job.masks if job.masks is not None else "zeros"
    return _finish(job, pqat(job.model, job.x, job.y, masks=masks, **_qat_options(job)))
