"""Per-layer parameters, nonzeros and MACs of a Keras model, and its latency: the twins of the PyTorch ones.

MACs come from each layer's input and output shapes in a Functional or Sequential model (batch 1):

* ``Dense``/``EinsumDense``-free dense layers: output elements × input features;
* ``Conv1D/2D/3D``: output elements × kernel elements × input channels / groups;
* ``DepthwiseConv1D/2D``: output elements × kernel elements;
* ``SeparableConv1D/2D``: the depthwise part plus a 1×1 pointwise convolution;
* ``Conv*DTranspose``: input elements × kernel elements × output channels;
* every other layer counts 0 (normalisation, activations, pooling, reshaping). Attention layers
  are counted through their ``Dense``-like sub-layers only when those appear as layers.
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import numpy as np

from prunekit.errors import ConfigError
from prunekit.report.measures import LatencyResult, LayerStats, ModelSummary


def _elements(shape: Any) -> int:
    return math.prod(int(d) for d in tuple(shape)[1:])  # batch dimension excluded: MACs per sample


def _layer_macs(layer: Any) -> int:
    import keras

    kind = keras.layers
    if not layer.weights:
        return 0
    out = _elements(layer.output.shape)
    if isinstance(layer, kind.Dense):
        return out * int(layer.kernel.shape[0])
    if isinstance(layer, (kind.DepthwiseConv1D, kind.DepthwiseConv2D)):
        kernel = layer.kernel.shape  # (*spatial, in_channels, multiplier)
        return out * math.prod(int(d) for d in kernel[:-2])
    if isinstance(layer, (kind.SeparableConv1D, kind.SeparableConv2D)):
        depthwise = layer.depthwise_kernel.shape  # (*spatial, in, multiplier)
        spatial, channels = math.prod(int(d) for d in depthwise[:-2]), int(depthwise[-2]) * int(depthwise[-1])
        positions = out // int(layer.filters)
        return positions * channels * spatial + out * channels
    if isinstance(layer, (kind.Conv1DTranspose, kind.Conv2DTranspose, kind.Conv3DTranspose)):
        kernel = layer.kernel.shape  # (*spatial, out_channels, in_channels)
        return _elements(layer.input.shape) * math.prod(int(d) for d in kernel[:-2]) * int(kernel[-2])
    if isinstance(layer, (kind.Conv1D, kind.Conv2D, kind.Conv3D)):
        kernel = layer.kernel.shape  # (*spatial, in_channels / groups, out_channels)
        return out * math.prod(int(d) for d in kernel[:-1])
    return 0


def _leaf_layers(model: Any, prefix: str = "") -> list[tuple[str, Any]]:
    import keras

    found = []
    for layer in model.layers:
        name = f"{prefix}{layer.name}"
        if isinstance(layer, keras.Model):
            found += _leaf_layers(layer, f"{name}/")
        else:
            found.append((name, layer))
    return found


def summarize(model: Any) -> ModelSummary:
    """Per-layer params, nonzeros, MACs and sparse MACs (per sample) of a built Functional/Sequential model.

    A layer's sparse MACs are its MACs times the density of its kernel.

    Example::

        summary = summarize(prunekit.keras.digits_cnn())
        summary.layer("conv2").macs   # 64 * 8 * 8 * 32 * 9 = 1179648
    """
    import keras

    if not isinstance(model, keras.Model):
        raise ConfigError(f"summarize expects a keras.Model, got {type(model).__name__}")
    rows = []
    for name, layer in _leaf_layers(model):
        params = sum(int(np.prod(w.shape)) for w in layer.weights if w.trainable)
        try:
            macs = _layer_macs(layer)
        except (AttributeError, ValueError) as exc:
            raise ConfigError(f"layer {name!r} has no known input/output shape ({exc}); MACs are counted on built "
                              "Functional or Sequential models: build it with keras.Input first") from None
        if not params and not macs:
            continue
        values = [np.asarray(w.numpy()) for w in layer.weights if w.trainable]
        nonzeros = sum(int(np.count_nonzero(v)) for v in values)
        kernel = getattr(layer, "kernel", None)
        density = 1.0
        if kernel is not None:
            array = np.asarray(kernel.numpy())
            density = float(np.count_nonzero(array)) / array.size if array.size else 1.0
        rows.append(LayerStats(name, type(layer).__name__, params, nonzeros, macs, round(macs * density)))
    return ModelSummary(rows)


def _to_host(output: Any) -> Any:
    import keras

    return output.numpy() if hasattr(output, "numpy") else keras.ops.convert_to_numpy(output)


def measure_latency(model: Any, sample_shape: Sequence[int], batch_sizes: Sequence[int] = (1, 32), *,
                    warmup: int = 5, repeats: int = 30) -> list[LatencyResult]:
    """Median and p90 of ``model(x, training=False)`` per batch size, in milliseconds (TensorFlow's device).

    Example::

        measure_latency(prunekit.keras.digits_cnn(), (8, 8, 1), batch_sizes=(1, 64))[0].median_ms
    """
    import tensorflow as tf

    shape = tuple(sample_shape)
    if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ConfigError(f"sample_shape should be positive integers without the batch dim, e.g. (8, 8, 1); got {sample_shape!r}")
    if not batch_sizes or not all(isinstance(b, int) and b > 0 for b in batch_sizes):
        raise ConfigError(f"batch_sizes should be positive integers, got {batch_sizes!r}")
    if not isinstance(repeats, int) or repeats < 1 or not isinstance(warmup, int) or warmup < 0:
        raise ConfigError(f"repeats should be >= 1 and warmup >= 0, got repeats={repeats!r}, warmup={warmup!r}")
    device = "cuda" if tf.config.list_physical_devices("GPU") else "cpu"
    threads = tf.config.threading.get_intra_op_parallelism_threads()
    results = []
    for size in batch_sizes:
        batch = np.random.default_rng(0).standard_normal((size, *shape)).astype("float32")
        for _ in range(warmup):
            _to_host(model(batch, training=False))
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            _to_host(model(batch, training=False))  # waits for the device
            samples.append((time.perf_counter() - start) * 1e3)
        results.append(LatencyResult(device, size, float(np.median(samples)), float(np.percentile(samples, 90)),
                                     repeats, threads))
    return results
