"""A trained digits CNN and its 90%-sparse fine-tuned copy, built once per test session (cached).

Used by the export, quantization, compact-file and artifact tests. Training is a few seconds on
2 CPU cores: Adam on scikit-learn's bundled digits, then prunekit's ``Pruner`` prunes every
conv/linear weight to 90% by global magnitude, a short masked fine-tune, and ``strip()``.
"""

from __future__ import annotations

import copy
import functools
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from prunekit.data import DatasetSplit, load_digits
from prunekit.torch import DigitsCNN, Pruner, fit, make_loader

SPARSITY = 0.9


@functools.cache
def digits() -> DatasetSplit:
    return load_digits(seed=0)


@functools.cache
def _states() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the shared 2-core machines train this tiny CNN fastest on one thread
    try:
        return _train_dense_and_pruned()
    finally:
        torch.set_num_threads(threads)


def _train_dense_and_pruned() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    split = digits()
    loader = make_loader(split.x_train, split.y_train, batch_size=64, shuffle=True, seed=0)
    dense = DigitsCNN()
    fit(dense, loader, epochs=8, lr=3e-3, progress=False)
    pruned = copy.deepcopy(dense)
    pruner = Pruner(pruned, SPARSITY, scope="global")
    pruner.prune()
    fit(pruned, loader, epochs=4, lr=3e-3, pruner=pruner, progress=False)
    pruner.strip()
    return dense.eval().state_dict(), pruned.eval().state_dict()


def dense_cnn() -> DigitsCNN:
    """A fresh copy of the trained dense CNN (eval mode)."""
    model = DigitsCNN()
    model.load_state_dict(_states()[0])
    return model.eval()


def pruned_cnn() -> DigitsCNN:
    """A fresh copy of the trained CNN with 90% of its conv/linear weights exactly zero (eval mode)."""
    model = DigitsCNN()
    model.load_state_dict(_states()[1])
    return model.eval()


_WORKDIR = tempfile.TemporaryDirectory(prefix="prunekit-export-tests-")


@functools.cache
def pruned_export():
    """The pruned CNN exported once to ONNX from a batch-1 example (an ``OnnxExport``; shared, read-only)."""
    from prunekit.torch import export_onnx

    split = digits()
    return export_onnx(pruned_cnn(), torch.from_numpy(split.x_val[:1]), Path(_WORKDIR.name) / "pruned.onnx")


def pruned_onnx() -> Path:
    """Path of :func:`pruned_export`'s file."""
    return pruned_export().path


@functools.cache
def quantized_onnx(mode: str) -> Path:
    """The pruned CNN's ONNX file quantized once per mode (shared, read-only for tests)."""
    from prunekit.torch import quantize_onnx

    target = Path(_WORKDIR.name) / f"pruned.{mode}.onnx"
    calibration = digits().x_val if mode == "static" else None
    return quantize_onnx(pruned_onnx(), target, mode, calibration).path


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(-1).numpy() == y).mean())


@functools.cache
def _channel_pruned():
    from prunekit.torch import prune_channels

    return prune_channels(dense_cnn(), torch.from_numpy(digits().x_val[:2]), 0.5)


def channel_pruned_cnn() -> nn.Module:
    """A copy of the trained CNN with half its channels removed by ``prune_channels`` (carries its plan)."""
    return copy.deepcopy(_channel_pruned().model).eval()
