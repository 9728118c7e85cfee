"""A trained digits CNN and its 90%-sparse fine-tuned copy, built once per test session (cached).

Used by the export, quantization, compact-file and artifact tests. Training is a few seconds on
2 CPU cores: full-batch-ish Adam on scikit-learn's bundled digits, then a global magnitude
prune of every conv/linear weight to 90% and a short masked fine-tune.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from prunekit.data import DatasetSplit, load_digits
from prunekit.torch import DigitsCNN

SPARSITY = 0.9


@functools.lru_cache(maxsize=None)
def digits() -> DatasetSplit:
    return load_digits(seed=0)


def _train(model: nn.Module, split: DatasetSplit, epochs: int, masks: dict[str, torch.Tensor] | None = None) -> None:
    generator = torch.Generator().manual_seed(0)
    x, y = torch.from_numpy(split.x_train), torch.from_numpy(split.y_train)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), 64):
            batch = order[start:start + 64]
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
            if masks:
                with torch.no_grad():
                    for name, param in model.named_parameters():
                        if name in masks:
                            param.mul_(masks[name])
    model.eval()


def _global_magnitude_masks(model: nn.Module, sparsity: float) -> dict[str, torch.Tensor]:
    weights = {n: p.detach() for n, p in model.named_parameters() if p.ndim >= 2}
    scores = torch.cat([w.abs().flatten() for w in weights.values()])
    count = round(sparsity * scores.numel())
    order = torch.argsort(scores, stable=True)
    keep = torch.ones_like(scores)
    keep[order[:count]] = 0
    masks, offset = {}, 0
    for name, w in weights.items():
        masks[name] = keep[offset:offset + w.numel()].reshape(w.shape)
        offset += w.numel()
    return masks


@functools.lru_cache(maxsize=None)
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
    dense = DigitsCNN()
    _train(dense, split, epochs=8)
    pruned = DigitsCNN()
    pruned.load_state_dict(dense.state_dict())
    masks = _global_magnitude_masks(pruned, SPARSITY)
    with torch.no_grad():
        for name, param in pruned.named_parameters():
            if name in masks:
                param.mul_(masks[name])
    _train(pruned, split, epochs=4, masks=masks)
    return dense.state_dict(), pruned.state_dict()


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


@functools.lru_cache(maxsize=None)
def pruned_export():
    """The pruned CNN exported once to ONNX from a batch-1 example (an ``OnnxExport``; shared, read-only)."""
    from prunekit.torch import export_onnx

    split = digits()
    return export_onnx(pruned_cnn(), torch.from_numpy(split.x_val[:1]), Path(_WORKDIR.name) / "pruned.onnx")


def pruned_onnx() -> Path:
    """Path of :func:`pruned_export`'s file."""
    return pruned_export().path


@functools.lru_cache(maxsize=None)
def quantized_onnx(mode: str) -> Path:
    """The pruned CNN's ONNX file quantized once per mode (shared, read-only for tests)."""
    from prunekit.torch import quantize_onnx

    target = Path(_WORKDIR.name) / f"pruned.{mode}.onnx"
    calibration = digits().x_val if mode == "static" else None
    return quantize_onnx(pruned_onnx(), target, mode, calibration).path


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(-1).numpy() == y).mean())
