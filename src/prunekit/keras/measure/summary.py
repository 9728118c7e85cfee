"""Per-layer parameters, nonzeros and MACs of a Keras model, its latency and its peak inference memory:
the twins of the PyTorch ones.

MACs come from each layer's input and output shapes in a Functional or Sequential model (batch 1):

* ``Dense``/``EinsumDense``-free dense layers: output elements × input features;
* ``Conv1D/2D/3D``: output elements × kernel elements × input channels / groups;
* ``DepthwiseConv1D/2D``: output elements × kernel elements;
* ``SeparableConv1D/2D``: the depthwise part plus a 1×1 pointwise convolution;
* ``Conv*DTranspose``: input elements × kernel elements × output channels;
* every other layer counts 0 (normalisation, activations, pooling, reshaping). Attention layers
  are counted through their ``Dense``-like sub-layers only when those appear as layers.

Peak inference memory is a liveness analysis of the layer graph, not an allocator reading. The
layers run in the order Keras runs them (deepest first), on an input of the given batch size, with
every tensor's real shape and dtype (``compute_output_spec``). At each layer call the live tensors
are the model inputs (the caller holds them for the whole pass), the model outputs produced so far,
and every other layer output from the call that produces it until its last reader has run; a
layer's inputs and outputs are live together while it runs. The peak is the largest sum of live
bytes over the calls; weight bytes (every weight, trainable or not, e.g. BatchNormalization's moving
statistics) are added to it. ``Reshape``, ``Flatten``, ``Identity`` and the dropout/noise layers
(identities at inference) share their input's buffer: they cost nothing and keep it alive. Nested
Functional/Sequential models are flattened into their layer calls; any other layer, a subclassed
one included, is one call whose internal temporaries (e.g. a convolution's output before its fused
activation) are not counted. This is the memory a runtime that frees each tensor after its last use
needs (TensorFlow's graph executor under ``tf.function``/``predict``, PyTorch running an
``nn.Sequential``), on any device; eager ``model(x)`` in Keras keeps every intermediate until the
call returns, so it holds more.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from prunekit.core.records import LatencyResult, LayerStats, MemoryResult, ModelSummary
from prunekit.errors import ConfigError


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
            raise ConfigError(
                f"layer {name!r} has no known input/output shape ({exc}); MACs are counted on built "
                "Functional or Sequential models: build it with keras.Input first"
            ) from None
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


def _check_shape(sample_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(sample_shape)
    if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ConfigError(f"sample_shape should be positive integers without the batch dim, e.g. (8, 8, 1); got {sample_shape!r}")
    return shape


def _tf_device() -> str:
    import tensorflow as tf

    return "cuda" if tf.config.list_physical_devices("GPU") else "cpu"


def measure_latency(
    model: Any, sample_shape: Sequence[int], batch_sizes: Sequence[int] = (1, 32), *, warmup: int = 5, repeats: int = 30
) -> list[LatencyResult]:
    """Median and p90 of ``model(x, training=False)`` per batch size, in milliseconds (TensorFlow's device).

    Example::

        measure_latency(prunekit.keras.digits_cnn(), (8, 8, 1), batch_sizes=(1, 64))[0].median_ms
    """
    import tensorflow as tf

    shape = _check_shape(sample_shape)
    if not batch_sizes or not all(isinstance(b, int) and b > 0 for b in batch_sizes):
        raise ConfigError(f"batch_sizes should be positive integers, got {batch_sizes!r}")
    if not isinstance(repeats, int) or repeats < 1 or not isinstance(warmup, int) or warmup < 0:
        raise ConfigError(f"repeats should be >= 1 and warmup >= 0, got repeats={repeats!r}, warmup={warmup!r}")
    device = _tf_device()
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
        results.append(
            LatencyResult(device, size, float(np.median(samples)), float(np.percentile(samples, 90)), repeats, threads)
        )
    return results


def _shared_buffer_layers() -> tuple[type, ...]:
    import keras

    layers = keras.layers
    return (
        layers.Reshape,
        layers.Flatten,
        layers.Identity,
        layers.Dropout,
        layers.SpatialDropout1D,
        layers.SpatialDropout2D,
        layers.SpatialDropout3D,
        layers.GaussianNoise,
        layers.GaussianDropout,
        layers.AlphaDropout,
        layers.ActivityRegularization,
    )


def _graph(model: Any) -> Any | None:
    """The Functional graph that runs ``model`` (a built Sequential's inner one), or ``None`` when it has none."""
    import keras
    from keras.src.models.functional import Functional

    if isinstance(model, keras.Sequential):
        return model._functional
    return model if isinstance(model, Functional) else None


def _nbytes(shape: Sequence[int], dtype: str) -> int:
    import tensorflow as tf

    return math.prod(shape) * tf.as_dtype(dtype).size


class _Trace:
    """The layer calls of one forward pass in execution order, over numbered tensor buffers."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.calls: list[tuple[list[int], list[int]]] = []  # (buffers read, buffers written) per call

    def buffer(self, spec: Any, owner: str) -> int:
        """A new buffer holding ``spec`` (a ``KerasTensor`` of concrete shape), produced by ``owner``."""
        if any(d is None for d in spec.shape):
            raise ConfigError(
                f"layer {owner!r} gives a tensor of shape {tuple(spec.shape)} whose size depends on the "
                "data; peak memory needs static shapes: use a model whose layers keep them"
            )
        self.sizes.append(_nbytes(spec.shape, spec.dtype))
        return len(self.sizes) - 1

    def run(self, graph: Any, inputs: list[tuple[Any, int]], prefix: str = "") -> list[tuple[Any, int]]:
        """Walks ``graph`` as Keras runs it from ``(spec, buffer)`` inputs; returns its outputs the same way."""
        import keras
        from keras import tree

        specs = {id(x): spec for x, (spec, _) in zip(graph.inputs, inputs)}
        buffers = {id(x): buffer for x, (_, buffer) in zip(graph.inputs, inputs)}
        for depth in sorted(graph._nodes_by_depth, reverse=True):
            for node in graph._nodes_by_depth[depth]:
                if not node.operation or node.is_input or any(id(x) not in specs for x in node.input_tensors):
                    continue
                name = f"{prefix}{node.operation.name}"
                reads = [buffers[id(x)] for x in node.input_tensors]
                inner = _graph(node.operation) if isinstance(node.operation, keras.Model) else None
                if inner is not None:
                    outputs = self.run(inner, [(specs[id(x)], buffers[id(x)]) for x in node.input_tensors], f"{name}/")
                else:
                    args, kwargs = node.arguments.fill_in(specs)
                    outputs = self._call(
                        node.operation, name, reads, tree.flatten(node.operation.compute_output_spec(*args, **kwargs))
                    )
                for x, (spec, buffer) in zip(node.outputs, outputs):
                    specs[id(x)], buffers[id(x)] = spec, buffer
        return [(specs[id(x)], buffers[id(x)]) for x in graph.outputs]

    def _call(self, layer: Any, name: str, reads: list[int], specs: list[Any]) -> list[tuple[Any, int]]:
        """Records one layer call; a shared-buffer layer writes nothing and passes its input's buffer on."""
        if isinstance(layer, _shared_buffer_layers()):
            self.calls.append((reads, []))
            return [(specs[0], reads[0])]
        writes = [self.buffer(spec, name) for spec in specs]
        self.calls.append((reads, writes))
        return list(zip(specs, writes))

    def peak(self, inputs: list[int], outputs: list[int]) -> int:
        """The largest sum of live bytes over the calls; the model's inputs and outputs are never freed."""
        last_read = {buffer: index for index, (reads, _) in enumerate(self.calls) for buffer in reads}
        held = {*inputs, *outputs}
        live = set(inputs)
        current = peak = sum(self.sizes[buffer] for buffer in live)
        for index, (reads, writes) in enumerate(self.calls):
            live.update(writes)
            current += sum(self.sizes[buffer] for buffer in writes)
            peak = max(peak, current)
            for buffer in {*reads, *writes} - held:
                if buffer in live and last_read.get(buffer, index) <= index:
                    live.remove(buffer)
                    current -= self.sizes[buffer]
        return peak


def _single_input(model: Any, graph: Any, shape: tuple[int, ...]) -> Any:
    if len(graph.inputs) != 1:
        raise ConfigError(
            f"model {model.name!r} has {len(graph.inputs)} inputs; measure_peak_memory takes one "
            "sample_shape, so it measures single-input models"
        )
    declared = tuple(graph.inputs[0].shape)[1:]
    if len(declared) != len(shape) or any(d is not None and d != s for d, s in zip(declared, shape)):
        raise ConfigError(
            f"sample_shape {shape} does not fit model {model.name!r}, whose input is "
            f"{declared} without the batch dim; pass a shape like {tuple(d or 1 for d in declared)}"
        )
    return graph.inputs[0]


def measure_peak_memory(
    model: Any, sample_shape: Sequence[int], batch_size: int = 1, *, device: str | None = None
) -> MemoryResult:
    """Peak memory of one inference pass of a Functional/Sequential model: weights plus activations live at the peak.

    A liveness analysis of the layer graph at ``batch_size`` (see the module docstring); it reads no
    allocator, so the figure is the same on every device. ``device`` labels the result: ``"cpu"``,
    ``"cuda"``, or ``None`` for the device TensorFlow runs the model on.

    Example::

        memory = measure_peak_memory(prunekit.keras.digits_cnn(), (8, 8, 1), batch_size=64)
        memory.peak_bytes, memory.peak_activation_bytes
    """
    import keras

    shape = _check_shape(sample_shape)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size should be a positive integer, got {batch_size!r}")
    if device not in (None, "cpu", "cuda"):
        raise ConfigError(f"device should be 'cpu', 'cuda' or None (TensorFlow's device), got {device!r}")
    if not isinstance(model, keras.Model):
        raise ConfigError(f"measure_peak_memory expects a keras.Model, got {type(model).__name__}")
    graph = _graph(model)
    if graph is None and isinstance(model, keras.Sequential):
        raise ConfigError(
            f"Sequential model {model.name!r} has no layer graph yet; start it with keras.Input(...) "
            "or call model.build(input_shape) first"
        )
    if graph is None:
        raise ConfigError(
            f"model {model.name!r} is a subclassed {type(model).__name__} without a layer graph; "
            "measure_peak_memory analyses Functional and Sequential models: build the same layers "
            "from keras.Input with the functional API"
        )
    source = _single_input(model, graph, shape)
    trace = _Trace()
    spec = keras.KerasTensor((batch_size, *shape), dtype=source.dtype)
    buffer = trace.buffer(spec, source.name)
    outputs = trace.run(graph, [(spec, buffer)])
    activations = trace.peak([buffer], [output for _, output in outputs])
    weights = sum(_nbytes(w.shape, w.dtype) for w in model.weights)
    return MemoryResult(device or _tf_device(), batch_size, weights, activations, weights + activations)
