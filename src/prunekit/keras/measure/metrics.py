"""Sparsity and size of a Keras model: per-weight zeros, parameter counts, weights-file bytes raw and gzip."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from prunekit.core.gzip import gzip_size
from prunekit.core.records import sparsity_summary


def sparsity_report(model: Any) -> dict[str, Any]:
    """Per-weight and total sparsity of every trainable weight: shapes, counts, nonzeros, zero fraction.

    Example::

        report = sparsity_report(model)
        report["sparsity"], report["layers"]["digits_cnn/fc1/kernel"]["nonzero"]
    """
    return sparsity_summary(
        (weight.path, tuple(weight.shape), int(np.count_nonzero(np.asarray(weight.numpy()))))
        for weight in model.trainable_weights
    )


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
