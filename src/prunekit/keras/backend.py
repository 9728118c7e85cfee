"""The Keras backend: the contract's verbs over arrays, and the handlers of the built-in training methods.

The twin of :mod:`prunekit.torch.backend`: same verbs, same parameters, same return types, so
recipes, demos and sweeps run either framework through :mod:`prunekit.methods`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np

from prunekit.core.records import epoch_records
from prunekit.keras.measure.metrics import serialized_size
from prunekit.keras.measure.summary import measure_latency
from prunekit.keras.measure.summary import measure_peak_memory as _measure_peak_memory
from prunekit.keras.measure.summary import summarize as _summarize
from prunekit.keras.tradeoffs.allocation import prunable_layers
from prunekit.keras.tradeoffs.sensitivity import Accuracy, analyze_sensitivity
from prunekit.keras.unstructured.workflows import prune_gradually, prune_iteratively, prune_one_shot
from prunekit.methods.contract import PruningRun, TrainJob

name = "keras"
__all__ = ["Accuracy", "analyze_sensitivity", "measure_latency", "serialized_size"]  # verbs re-exported as they are


def is_model(obj: Any) -> bool:
    """Whether ``obj`` is a model of this backend (a ``keras.Model``)."""
    return isinstance(obj, keras.Model)


def clone(model: keras.Model) -> keras.Model:
    """An independent copy of ``model`` (architecture and weights)."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def _compile(model: keras.Model, lr: float) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def fit(
    model: keras.Model, x: Any, y: Any, *, epochs: int, lr: float, batch_size: int = 64, seed: int = 0, progress: bool = False
) -> list[dict[str, float]]:
    """Train a classifier (logits output) on arrays ``(x, y)`` with Adam; one dict of metrics per epoch.

    Example::

        fit(model, split.x_train, split.y_train, epochs=4, lr=1e-3)
    """
    keras.utils.set_random_seed(seed)
    _compile(model, lr)
    history = model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=1 if progress else 0)
    return epoch_records(history.history)


def predict(model: keras.Model, x: Any) -> np.ndarray:
    """The model's outputs for arrays ``x`` (one batch) in inference mode, as numpy.

    Example::

        predict(model, split.x_test[:64]).argmax(-1)
    """
    # a direct call, not predict(): predict() traces a new function for every model
    return np.asarray(model(np.asarray(x), training=False))


def accuracy(model: keras.Model, x: Any, y: Any) -> float:
    """Top-1 accuracy of a classifier on arrays ``(x, y)``, in [0, 1]."""
    return Accuracy(x, y, batch_size=512)(model)


def summarize(model: keras.Model, x: Any) -> Any:
    """Per-layer params, nonzeros and MACs (a :class:`~prunekit.core.records.ModelSummary`); ``x`` unused
    (Keras models carry their shapes)."""
    return _summarize(model)


def load_weights(path: str, factory: Any) -> keras.Model:
    """Build ``factory()`` and load a ``.weights.h5`` file or a saved ``.keras`` model's weights into it."""
    from prunekit.errors import ConfigError

    if not Path(path).is_file():
        raise ConfigError(f"weights file {path} does not exist")
    model = factory()
    if str(path).endswith(".keras"):
        model.set_weights(keras.saving.load_model(path, compile=False).get_weights())
    else:
        model.load_weights(path)
    return model


def measure(model: keras.Model, x: Any) -> dict[str, Any]:
    """The figures a results row holds: params, nonzeros, sparsity, MACs, sparse MACs, weights bytes raw and gzip.

    Example::

        measure(model, split.x_test)["sparse_macs"]
    """
    return {**summarize(model, x).totals(), **serialized_size(model)}


def measure_peak_memory(model: keras.Model, x: Any, batch_size: int = 1) -> Any:
    """Peak memory of one inference pass at ``batch_size`` samples shaped like ``x[0]`` (a
    :class:`~prunekit.core.records.MemoryResult`, from a liveness analysis of the layer graph).

    Example::

        measure_peak_memory(model, split.x_test, batch_size=64).peak_bytes
    """
    return _measure_peak_memory(model, tuple(np.asarray(x[:1]).shape[1:]), batch_size)


def layers(model: keras.Model) -> list[str]:
    """Names of the layers whose weights the unstructured methods prune (Dense, Conv*, ...)."""
    return prunable_layers(model)


def save(model: keras.Model, path: str | Path) -> str:
    """Write the model's weights to ``path`` + ``.weights.h5``; :func:`load_weights` reads them back into a
    model its factory builds.

    Example::

        load_weights(save(model, "out/pruned"), prunekit.keras.digits_cnn)
    """
    from prunekit.core.atomic import atomic_path

    file = Path(path)
    file = file.with_name(file.name + ".weights.h5")
    with atomic_path(file) as temporary:
        model.save_weights(str(temporary))
    return str(file)


def measure_sparse_runtime(model: keras.Model, x: Any, batch_size: int = 1) -> dict[str, Any] | None:
    """Always None: prunekit's sparse kernels run PyTorch models; a Keras model's sparsity pays off in
    TFLite, whose XNNPACK delegate chooses its sparse path itself (see ``PruneForLatencyOnXNNPack``)."""
    return None


def export(model: keras.Model, x: Any, path: str | Path, *, int8: bool = False, calibration: Any = None) -> dict[str, str]:
    """Write ``path`` + ``.tflite`` (and, with ``int8``, a full-integer ``.int8.tflite`` calibrated on
    ``calibration``); returns ``{"tflite": file, "int8": file}``.

    Example::

        export(model, split.x_val, "out/pruned", int8=True, calibration=split.x_val[:256])
    """
    from prunekit.keras.deploy.tflite import convert_to_tflite

    path = Path(path)
    files = {"tflite": str(path.with_name(path.name + ".tflite"))}
    convert_to_tflite(model, output_path=files["tflite"])
    if int8:
        files["int8"] = str(path.with_name(path.name + ".int8.tflite"))
        convert_to_tflite(
            model, "int8", representative_data=calibration if calibration is not None else x[:256], output_path=files["int8"]
        )
    return files


def _options(job: TrainJob) -> dict[str, Any]:
    from prunekit.errors import ConfigError

    options = job.options
    if options["scope"] != "layer" or options["importance"] != "magnitude":
        raise ConfigError(
            f"Keras pruning (prune_low_magnitude) prunes each layer by magnitude; got scope "
            f"{options['scope']!r}, importance {options['importance']!r}: use scope 'layer', importance 'magnitude'"
        )
    keras.utils.set_random_seed(job.seed)
    checkpoint = {} if job.checkpoint is None else {"checkpoint": job.checkpoint}  # a prunekit.keras.EpochCheckpoint
    return {"lr": options["lr"], "batch_size": job.batch_size, "exclude": tuple(options["exclude"]), **checkpoint}


def prune_gradually_job(job: TrainJob) -> PruningRun:
    """Handler: :func:`prune_gradually` over ``max(epochs, 2)`` epochs."""
    return prune_gradually(job.model, job.x, job.y, job.amount, epochs=max(job.options["epochs"], 2), **_options(job))


def prune_one_shot_job(job: TrainJob) -> PruningRun:
    """Handler: :func:`prune_one_shot`, fine-tuning ``epochs``."""
    return prune_one_shot(job.model, job.x, job.y, job.amount, finetune_epochs=job.options["epochs"], **_options(job))


def prune_iteratively_job(job: TrainJob) -> PruningRun:
    """Handler: :func:`prune_iteratively` in ``rounds`` sharing ``epochs`` (at least one epoch a round)."""
    rounds = job.options["rounds"]
    per_round = max(1, job.options["epochs"] // rounds)
    return prune_iteratively(job.model, job.x, job.y, job.amount, rounds=rounds, epochs_per_round=per_round, **_options(job))


def prune_channels(model: keras.Model, x: Any, ratio: float) -> Any:
    """Remove ``ratio`` of the channels of every prunable layer (L1), the pruned model checked on a few
    samples of ``x``; returns the :class:`~prunekit.core.structured.StructuredResult`."""
    from prunekit.keras.structured.prune import prune_channels as _prune_channels

    return _prune_channels(model, np.asarray(x[:8]), ratio=ratio, importance="l1")


def prune_channels_job(job: TrainJob) -> PruningRun:
    """Handler: remove ``amount`` of the channels (L1), then fine-tune the smaller model ``epochs``."""
    if job.amount > 0:
        result = prune_channels(job.model, job.x, job.amount)
        smaller, plan = result.model, result.plan
    else:
        smaller, plan = clone(job.model), None
    history = fit(
        smaller,
        job.x,
        job.y,
        epochs=job.options["epochs"],
        lr=job.options["lr"],
        batch_size=job.batch_size,
        seed=job.seed,
        progress=job.progress,
    )
    return PruningRun(smaller, None, history, job.amount, plan=plan)
