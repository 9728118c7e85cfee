"""The ONNX Runtime helpers of export, quantization and evaluation, from their framework-free home :mod:`prunekit._ort`."""

from __future__ import annotations

from prunekit._ort import (InputSpec, Samples, as_samples, batch_of, feed, generated_batch, input_specs,
                           quiet_exporters, rows, sample_count, session)

__all__ = ["InputSpec", "Samples", "as_samples", "batch_of", "feed", "generated_batch", "input_specs",
           "quiet_exporters", "rows", "sample_count", "session"]
