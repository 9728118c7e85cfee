"""Sparsity and size of a Keras model: per-weight zeros, parameter counts, weights-file bytes raw and gzip."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from prunekit.keras._files import gzip_size


def sparsity_report(model: Any) -> dict[str, Any]:
    """Per-weight and total sparsity of every trainable weight: shapes, counts, nonzeros, zero fraction.

    Example::

        report = sparsity_report(model)
        report["sparsity"], report["layers"]["digits_cnn/fc1/kernel"]["nonzero"]
    """
    layers: dict[str, dict[str, Any]] = {}
    for weight in model.trainable_weights:
        values = np.asarray(weight.numpy())
        nonzero = int(np.count_nonzero(values))
        layers[weight.path] = {
            "shape": list(values.shape),
            "numel": int(values.size),
            "nonzero": nonzero,
            "sparsity": 1.0 - nonzero / values.size if values.size else 0.0,
        }
    total = sum(layer["numel"] for layer in layers.values())
    nonzero = sum(layer["nonzero"] for layer in layers.values())
    return {
        "layers": layers,
        "total_params": total,
        "nonzero_params": nonzero,
        "sparsity": 1.0 - nonzero / total if total else 0.0,
    }


def serialized_size(model: Any) -> dict[str, int]:
    """Bytes of the model's weights (no optimizer state) as an HDF5 file, raw and gzip-compressed.

    One float dataset per ``weight.path``, as Keras's ``.weights.h5`` holds them. As TF MOT
    reports it: the zeros left by pruning do not shrink the raw file, they shrink the gzip one.

    Example::

        serialized_size(model)  # {"raw_bytes": 617000, "gzip_bytes": 105000}
    """
    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as handle:
        for weight in model.weights:
            handle.create_dataset(weight.path, data=np.asarray(weight.numpy()))
    raw = buffer.getvalue()
    return {"raw_bytes": len(raw), "gzip_bytes": gzip_size(raw)}
