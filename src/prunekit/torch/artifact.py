"""Measure a deployable ONNX file itself: accuracy, latency, file size raw and gzip, peak memory.

The measuring is framework-free and lives in :mod:`prunekit.onnx_artifact` (``prunekit inspect
model.onnx`` runs it without torch); the PyTorch backend keeps these names for its users.

Example::

    from prunekit.torch.artifact import evaluate_onnx
    evaluate_onnx("model.int8.onnx", (split.x_test, split.y_test)).latency[64].median_ms
"""

from __future__ import annotations

from prunekit.onnx_artifact import (ArtifactReport, LatencyStats, evaluate_onnx, file_sizes, measure_latency,
                                    onnx_accuracy, peak_memory)

__all__ = ["ArtifactReport", "LatencyStats", "evaluate_onnx", "file_sizes", "measure_latency", "onnx_accuracy",
           "peak_memory"]
