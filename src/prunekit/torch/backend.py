"""The PyTorch backend: the contract's verbs over arrays, and the handlers of the built-in training methods.

Front ends (recipes, demos, sweeps) call these with numpy arrays, as they call
:mod:`prunekit.keras.backend`, so they need no framework-specific code. Handlers take a
:class:`~prunekit.methods.TrainJob` and return a :class:`~prunekit.methods.PruningRun`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit.methods.contract import PruningRun, TrainJob
from prunekit.torch.deploy.weights import load_weights
from prunekit.torch.measure.latency import measure_latency
from prunekit.torch.measure.latency import measure_peak_memory as _measure_peak_memory
from prunekit.torch.measure.metrics import serialized_size
from prunekit.torch.measure.summary import summarize as _summarize
from prunekit.torch.tradeoffs.sensitivity import Accuracy, analyze_sensitivity, prunable_layers
from prunekit.torch.training import fit as _fit
from prunekit.torch.training import make_loader
from prunekit.torch.unstructured.workflows import prune_gradually, prune_iteratively, prune_one_shot

name = "torch"
__all__ = [
    "Accuracy",
    "analyze_sensitivity",
    "load_weights",
    "measure_latency",
    "serialized_size",
]  # verbs re-exported as they are


def is_model(obj: Any) -> bool:
    """Whether ``obj`` is a model of this backend (an ``nn.Module``)."""
    return isinstance(obj, nn.Module)


def clone(model: nn.Module) -> nn.Module:
    """An independent copy of ``model``."""
    return copy.deepcopy(model)


def fit(
    model: nn.Module, x: Any, y: Any, *, epochs: int, lr: float, batch_size: int = 64, seed: int = 0, progress: bool = False
) -> list[dict[str, float]]:
    """Train a classifier on arrays ``(x, y)`` with Adam; one dict of metrics per epoch.

    Example::

        fit(model, split.x_train, split.y_train, epochs=4, lr=1e-3)
    """
    return _fit(model, make_loader(x, y, batch_size=batch_size, seed=seed), epochs=epochs, lr=lr, progress=progress)


def predict(model: nn.Module, x: Any) -> np.ndarray:
    """The model's outputs for arrays ``x`` (one batch), in eval mode without gradients, as numpy; the model's
    training mode is restored.

    Example::

        predict(model, split.x_test[:64]).argmax(-1)
    """
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        with torch.no_grad():
            return model(torch.as_tensor(np.asarray(x)).to(device)).cpu().numpy()
    finally:
        model.train(was_training)


def accuracy(model: nn.Module, x: Any, y: Any) -> float:
    """Top-1 accuracy of a classifier on arrays ``(x, y)``, in [0, 1]."""
    return Accuracy(x, y)(model)


def summarize(model: nn.Module, x: Any) -> Any:
    """Per-layer params, nonzeros and MACs (a :class:`~prunekit.core.records.ModelSummary`) for samples like ``x[:1]``."""
    model = model.eval()
    return _summarize(model, torch.as_tensor(np.asarray(x[:1])).to(next(model.parameters()).device))


def measure(model: nn.Module, x: Any) -> dict[str, Any]:
    """The figures a results row holds for a model taking samples like ``x[:1]``: params, nonzeros, sparsity,
    MACs, sparse MACs, state_dict bytes raw and gzip.

    Example::

        measure(model, split.x_test)["sparse_macs"]
    """
    return {**summarize(model, x).totals(), **serialized_size(model)}


def measure_peak_memory(model: nn.Module, x: Any, batch_size: int = 1) -> Any:
    """Peak memory of one inference pass at ``batch_size`` samples shaped like ``x[0]`` (a
    :class:`~prunekit.core.records.MemoryResult`), on the device the model is on.

    Example::

        measure_peak_memory(model, split.x_test, batch_size=64).peak_bytes
    """
    device = next(model.parameters()).device
    return _measure_peak_memory(model, tuple(np.asarray(x[:1]).shape[1:]), batch_size, device=str(device))


def layers(model: nn.Module) -> list[str]:
    """Names of the layers whose weights the unstructured methods prune by default (Linear, Conv*, Embedding)."""
    return prunable_layers(model)


def save(model: nn.Module, path: str | Path) -> str:
    """Write the model's weights to ``path`` + ``.safetensors``; :func:`load_weights` reads them back into a
    model its factory builds (for a channel-pruned model, pass ``save_pruned``'s plan-carrying file instead).

    Example::

        load_weights(save(model, "out/pruned"), DigitsCNN)
    """
    from safetensors.torch import save_model

    from prunekit.core.atomic import atomic_path

    file = Path(path)
    file = file.with_name(file.name + ".safetensors")
    with atomic_path(file) as temporary:
        save_model(model, str(temporary))
    return str(file)


def measure_sparse_runtime(model: nn.Module, x: Any, batch_size: int = 1) -> dict[str, Any] | None:
    """Dense vs sparse-kernel latency per layer and end to end at ``batch_size`` rows of ``x`` (the per-layer
    choice of :func:`~prunekit.torch.sparsify`), or None when no layer is sparse enough to run sparse.

    Example::

        measure_sparse_runtime(pruned, split.x_test, batch_size=1)["speedup"]   # e.g. 1.9
    """
    from prunekit.torch.deploy.sparse.convert import sparse_latency_report

    device = next(model.parameters()).device
    report = sparse_latency_report(model.cpu(), torch.as_tensor(np.asarray(x[:batch_size])))
    model.to(device)
    return None if report is None else report.to_json() | {"batch_size": batch_size}


def export(model: nn.Module, x: Any, path: str | Path, *, int8: bool = False, calibration: Any = None) -> dict[str, str]:
    """Write ``path`` + ``.onnx`` (and, with ``int8``, a statically quantized ``.int8.onnx`` calibrated on
    ``calibration``); returns ``{"onnx": file, "int8": file}``.

    Example::

        export(model, split.x_val, "out/pruned", int8=True, calibration=split.x_val[:256])
    """
    from prunekit.torch.deploy.export import export_onnx

    path = Path(path)
    files = {"onnx": str(path.with_name(path.name + ".onnx"))}
    export_onnx(model.eval(), torch.as_tensor(np.asarray(x[:1])), files["onnx"])
    if int8:
        from prunekit.artifacts.quantize import quantize_onnx

        files["int8"] = str(path.with_name(path.name + ".int8.onnx"))
        quantize_onnx(files["onnx"], files["int8"], "static", calibration if calibration is not None else x[:256])
    return files


def _options(job: TrainJob) -> dict[str, Any]:
    options = job.options
    return {
        "scope": options["scope"],
        "importance": options["importance"],
        "exclude": list(options["exclude"]),
        "progress": job.progress,
        "description": job.description,
        **({"device": job.device} if job.device else {}),
        **({"checkpoint": job.checkpoint} if job.checkpoint is not None else {}),
    }


def _loader(job: TrainJob) -> Any:
    return make_loader(job.x, job.y, batch_size=job.batch_size, seed=job.seed)


def prune_gradually_job(job: TrainJob) -> PruningRun:
    """Handler: :func:`prune_gradually` over ``max(epochs, 2)`` epochs."""
    return prune_gradually(
        job.model, _loader(job), job.amount, epochs=max(job.options["epochs"], 2), lr=job.options["lr"], **_options(job)
    )


def prune_one_shot_job(job: TrainJob) -> PruningRun:
    """Handler: :func:`prune_one_shot`, fine-tuning ``epochs``."""
    return prune_one_shot(
        job.model, _loader(job), job.amount, finetune_epochs=job.options["epochs"], lr=job.options["lr"], **_options(job)
    )


def prune_iteratively_job(job: TrainJob) -> PruningRun:
    """Handler: :func:`prune_iteratively` in ``rounds`` sharing ``epochs`` (at least one epoch a round)."""
    rounds = job.options["rounds"]
    return prune_iteratively(
        job.model,
        _loader(job),
        job.amount,
        rounds=rounds,
        epochs_per_round=max(1, job.options["epochs"] // rounds),
        lr=job.options["lr"],
        **_options(job),
    )


def prune_channels(model: nn.Module, x: Any, ratio: float) -> Any:
    """Remove ``ratio`` of the channels of every prunable layer (L1), traced on a few samples of ``x``;
    returns the :class:`~prunekit.torch.StructuredResult`."""
    from prunekit.torch.structured.prune import prune_channels as _prune_channels

    device = next(model.parameters()).device
    return _prune_channels(model, torch.as_tensor(np.asarray(x[:8])).to(device), ratio=ratio, importance="l1")


def prune_channels_job(job: TrainJob) -> PruningRun:
    """Handler: remove ``amount`` of the channels (L1), then fine-tune the smaller model ``epochs``."""
    if job.amount <= 0:
        result_model, plan = job.model, None
    else:
        result = prune_channels(job.model, job.x, job.amount)
        result_model, plan = result.model, result.plan
    history = _fit(
        result_model,
        _loader(job),
        epochs=job.options["epochs"],
        lr=job.options["lr"],
        progress=job.progress,
        description=job.description,
        **({"device": job.device} if job.device else {}),
    )
    return PruningRun(result_model, None, history, job.amount, plan=plan)
