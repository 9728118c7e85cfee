"""Quantization-aware training (QAT) and sparsity-preserving QAT (PQAT) for Keras 3, exported to int8 TFLite.

TF MOT's ``quantize_model`` does not run on Keras 3, so this module fake-quantizes the three
layer types that carry most of a CNN's weights, ``Dense``, ``Conv1D/2D/3D`` and
``DepthwiseConv2D``, by cloning the model with a fake-quant subclass of each (same names, same
config, same weights):

* kernels: int8 symmetric per output channel (``scale = max|w| / 127``, codes in [-127, 127]),
  the layout TFLite's converter uses, with a straight-through gradient;
* the layer's input and output: 8-bit per-tensor with ranges observed as a moving average of the
  batch min/max in training (``keras.quantizers.fake_quant_with_min_max_vars``);
* a ``BatchNormalization`` (and a ReLU) right after a quantized layer is folded into it first
  (:mod:`prunekit.keras.recover.fold`), so the output is fake-quantized after BN and ReLU, where
  the TFLite int8 model quantizes it.

:func:`strip_qat` clones back to the plain layers with the fake-quantized kernels as weights,
so the TFLite converter (:func:`export_tflite`, full int8 with a representative dataset) finds
weights already on the int8 grid and stores exactly those codes.

PQAT (:func:`pqat`) keeps the zeros of a pruned model (or the masks of a model still carrying
prunekit pruning state): pruned weights are multiplied out in every forward pass and a kept
weight never rounds to 0, so the int8 TFLite file has exactly the mask's zeros (checked).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
from keras import ops

from prunekit.core.records import epoch_records
from prunekit.errors import ConfigError, ExportError
from prunekit.keras.recover.fold import FoldedAway, FoldedBatchNorm, FoldedChain, fold_arrays, fold_plan

WEIGHT_QMAX = 127
FREEZE_BN_AFTER = 0
"""Default ``freeze_bn_after``: a folded BatchNormalization keeps its moving statistics from the start (``gamma``
and ``beta`` still train), so training computes the int8 model's arithmetic; chosen on the digits validation
split by ``scripts/keras_pqat_search.py`` (docs/recovery.md, "Keras PQAT vs PTQ")."""


def _channel_axes(layer: Any) -> tuple[int, ...]:
    """Kernel axes reduced to get one scale per output channel (TFLite's per-channel layout)."""
    rank = len(layer.kernel.shape)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return tuple(range(rank - 2))  # (kh, kw | in, multiplier): one scale per in * multiplier
    return tuple(range(rank - 1))


def kernel_codes(kernel: np.ndarray, mask: np.ndarray | None, axes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """int8 codes and per-channel scales of a kernel; with a mask, codes are 0 exactly where it is False.

    Example::

        codes, scale = kernel_codes(dense.kernel.numpy(), None, axes=(0,))   # scale of shape (1, units)
    """
    w = np.asarray(kernel, np.float32) * (mask if mask is not None else 1)
    scale = np.maximum(np.abs(w).max(axis=tuple(axes), keepdims=True) / WEIGHT_QMAX, 1e-12).astype(np.float32)
    codes = np.clip(np.round(w / scale), -WEIGHT_QMAX, WEIGHT_QMAX)
    if mask is not None:
        codes = np.where(mask & (codes == 0), np.where(w >= 0, 1.0, -1.0), codes) * mask
    return codes.astype(np.int8), scale


class _FakeQuant(FoldedBatchNorm):
    """Mixin: fake-quantized kernel, input and output; ``pqat_mask`` (1 kept, 0 pruned) when PQAT;
    activation ranges frozen after ``freeze_ranges_after`` training batches (``None``: never); a folded
    BatchNormalization (``batchnorm``, statistics frozen after ``freeze_bn_after`` batches), see :mod:`.fold`."""

    momentum = 0.9
    freeze_ranges_after: int | None = None

    def __init__(
        self,
        *args: Any,
        masked: bool = False,
        freeze_ranges_after: int | None = None,
        batchnorm: dict[str, Any] | None = None,
        freeze_bn_after: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.masked = masked
        self.freeze_ranges_after = freeze_ranges_after
        self.batchnorm = batchnorm
        self.freeze_bn_after = freeze_bn_after

    def build(self, input_shape: Any) -> None:
        super().build(input_shape)
        self._add_quant_state(self.masked)
        shape = self._kernel_shape()
        self._add_norm_state(shape[-2] * shape[-1] if isinstance(self, keras.layers.DepthwiseConv2D) else shape[-1])

    def get_config(self) -> dict[str, Any]:
        extra = {"masked": self.masked, "freeze_ranges_after": self.freeze_ranges_after}
        extra.update(batchnorm=self.batchnorm, freeze_bn_after=self.freeze_bn_after)
        return {**super().get_config(), **extra}

    def save_own_variables(self, store: Any) -> None:
        """Save every variable (kernel, bias, observed ranges, step counter, mask, BN state), not only the
        kernel and bias that ``Dense``/``Conv`` save, so ``model.save`` then ``load_model`` resumes QAT exactly."""
        keras.layers.Layer.save_own_variables(self, store)

    def load_own_variables(self, store: Any) -> None:
        """Load what :meth:`save_own_variables` saved, in the same order."""
        keras.layers.Layer.load_own_variables(self, store)

    def _add_quant_state(self, masked: bool) -> None:
        scalar = {"shape": (), "trainable": False}
        self.input_low = self.add_weight(name="input_low", initializer="zeros", **scalar)
        self.input_high = self.add_weight(name="input_high", initializer="zeros", **scalar)
        self.output_low = self.add_weight(name="output_low", initializer="zeros", **scalar)
        self.output_high = self.add_weight(name="output_high", initializer="zeros", **scalar)
        self.observed = self.add_weight(name="observed", initializer="zeros", **scalar)
        self.pqat_mask = (
            self.add_weight(name="pqat_mask", shape=self._kernel_shape(), initializer="ones", trainable=False) if masked else None
        )

    def _kernel_shape(self) -> tuple[int, ...]:
        return tuple(self.kernel.shape)

    def _range(self, x: Any, low: Any, high: Any, training: bool) -> tuple[Any, Any]:
        """The range to quantize ``x`` with; in training, an EMA of the batch min/max until ``freeze_ranges_after``
        training batches were observed, then exactly the range reached (``observed`` counts the batches)."""
        if not training:
            return low, high
        batch_low, batch_high = ops.minimum(ops.min(x), 0.0), ops.maximum(ops.max(x), 0.0)
        first = ops.equal(self.observed, 0.0)
        new_low = ops.where(first, batch_low, self.momentum * low + (1 - self.momentum) * batch_low)
        new_high = ops.where(first, batch_high, self.momentum * high + (1 - self.momentum) * batch_high)
        if self.freeze_ranges_after is not None:
            frozen = ops.greater_equal(self.observed, float(self.freeze_ranges_after))
            new_low, new_high = ops.where(frozen, low, new_low), ops.where(frozen, high, new_high)
        low.assign(new_low)
        high.assign(new_high)
        return new_low, new_high

    def _fake_quant_kernel(self) -> Any:
        kernel = self.kernel
        if self.pqat_mask is not None:
            kernel = kernel * self.pqat_mask
        kernel = self._fold_kernel(kernel)
        axes = _channel_axes(self)
        scale = ops.maximum(ops.max(ops.abs(kernel), axis=axes, keepdims=True) / WEIGHT_QMAX, 1e-12)
        codes = ops.clip(ops.round(kernel / scale), -WEIGHT_QMAX, WEIGHT_QMAX)
        if self.pqat_mask is not None:
            away = ops.where(kernel >= 0, 1.0, -1.0)
            kept = ops.cast(self.pqat_mask, "bool")
            codes = ops.where(ops.logical_and(kept, ops.equal(codes, 0.0)), away, codes) * self.pqat_mask
        return kernel + ops.stop_gradient(codes * scale - kernel)

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        training = bool(training)
        low, high = self._range(inputs, self.input_low, self.input_high, training)
        x = keras.quantizers.fake_quant_with_min_max_vars(inputs, low, high, num_bits=8)
        outputs = self._linear(x, self._fake_quant_kernel())
        if self.batchnorm is not None:
            outputs = self._norm_output(outputs, training, self.observed)
        elif self.use_bias:
            outputs = ops.add(outputs, ops.reshape(self.bias, self._bias_shape()))
        if self.activation is not None:
            outputs = self.activation(outputs)
        low, high = self._range(outputs, self.output_low, self.output_high, training)
        if training:
            self.observed.assign_add(1.0)
        return keras.quantizers.fake_quant_with_min_max_vars(outputs, low, high, num_bits=8)

    def _bias_shape(self) -> tuple[int, ...]:
        channels_first = getattr(self, "data_format", "channels_last") == "channels_first"
        rank = getattr(self, "rank", 0)
        size = int(self.bias.shape[0])
        return (1, size) + (1,) * rank if channels_first else (1,) * (rank + 1) + (size,) if rank else (size,)


@keras.saving.register_keras_serializable(package="prunekit")
class QuantDense(_FakeQuant, keras.layers.Dense):
    """``Dense`` with int8 fake quantization (see the module docstring)."""

    def _linear(self, x: Any, kernel: Any) -> Any:
        return ops.matmul(x, kernel)


def _conv_class(base: type) -> type:
    class QuantConv(_FakeQuant, base):
        def _linear(self, x: Any, kernel: Any) -> Any:
            if isinstance(self, keras.layers.DepthwiseConv2D):
                return ops.depthwise_conv(
                    x,
                    kernel,
                    strides=self.strides,
                    padding=self.padding,
                    dilation_rate=self.dilation_rate,
                    data_format=self.data_format,
                )
            return self.convolution_op(x, kernel)

    QuantConv.__name__ = QuantConv.__qualname__ = f"Quant{base.__name__}"
    return keras.saving.register_keras_serializable(package="prunekit")(QuantConv)


QuantConv1D = _conv_class(keras.layers.Conv1D)
QuantConv2D = _conv_class(keras.layers.Conv2D)
QuantConv3D = _conv_class(keras.layers.Conv3D)
QuantDepthwiseConv2D = _conv_class(keras.layers.DepthwiseConv2D)

# DepthwiseConv2D first: it is a Conv subclass in some Keras versions
_QUANT_CLASSES: list[tuple[type, type]] = [
    (keras.layers.DepthwiseConv2D, QuantDepthwiseConv2D),
    (keras.layers.Conv1D, QuantConv1D),
    (keras.layers.Conv2D, QuantConv2D),
    (keras.layers.Conv3D, QuantConv3D),
    (keras.layers.Dense, QuantDense),
]
_QUANT_TYPES = tuple(quant for _, quant in _QUANT_CLASSES)


def _quant_class(layer: Any) -> type | None:
    if isinstance(layer, _QUANT_TYPES):
        return None
    for base, quant in _QUANT_CLASSES:
        if type(layer) is base:
            return quant
    return None


def _check_model(model: Any) -> None:
    if not isinstance(model, keras.Model) or not (isinstance(model, keras.Sequential) or hasattr(model, "_nodes_by_depth")):
        raise ConfigError(
            f"Keras QAT clones Sequential and Functional models; got {type(model).__name__} (rebuild it as a Functional model)"
        )


@dataclass
class KerasQat:
    """A fake-quant clone of a Keras model: ``model`` (train it with ``fit``), the quantized layer names,
    the layers left in float (name -> reason), the masked layers' zero counts (PQAT), and the
    BatchNormalization chains folded into their Dense/Conv before fake quantization.

    Example::

        run = quantize_model(model)
        run.model.compile(...); run.model.fit(x, y, epochs=2)
    """

    model: Any
    quantized: tuple[str, ...]
    float_layers: dict[str, str]
    mask_zeros: dict[str, int]
    history: list[dict[str, float]] = field(default_factory=list)
    folded: tuple[FoldedChain, ...] = ()


def quantize_model(
    model: Any,
    *,
    masks: Any = None,
    exclude: Sequence[str] = (),
    fold_batchnorm: bool = True,
    freeze_ranges_after: int | None = None,
    freeze_bn_after: int | None = FREEZE_BN_AFTER,
) -> KerasQat:
    """Clone ``model`` with fake-quantized Dense/Conv/DepthwiseConv2D layers (weights copied).

    ``masks``: ``None`` (QAT), ``"zeros"`` (keep the exact zeros of the kernels: PQAT) or a dict
    ``{layer name: boolean mask of its kernel}``. Layers with weights of other types stay float
    and are listed in ``float_layers``; ``exclude`` names layers to leave in float. With
    ``fold_batchnorm`` (default), each ``Dense/Conv -> BatchNormalization [-> ReLU]`` chain is
    folded into its first layer as the TFLite converter folds it (see :mod:`.fold`), so the
    fake quantization sits where the int8 file quantizes; ``folded`` lists the chains.
    ``freeze_ranges_after``: training batches after which each layer's activation ranges stop
    moving (the observers are frozen, as PyTorch's QAT recipe does after the first epochs); ``None``
    keeps them moving. ``freeze_bn_after``: training batches after which a folded BatchNormalization
    stops using batch statistics and updating its moving ones (default ``0``: frozen from the start;
    ``None``: never, as in a float fine-tune); its ``gamma``/``beta`` train either way.

    Example::

        qat_model = quantize_model(pruned, masks="zeros").model
    """
    _check_model(model)
    _check_freeze("freeze_ranges_after", freeze_ranges_after, 1)
    _check_freeze("freeze_bn_after", freeze_bn_after, 0)
    from prunekit.keras.unstructured.state import prunings

    if prunings(model):
        raise ConfigError(
            "this model still carries pruning state; pass strip_pruning(model) (its zeros are kept with masks='zeros')"
        )
    names = {layer.name for layer in model.layers}
    unknown = sorted(set(exclude) - names)
    if unknown:
        raise ConfigError(f"exclude names layer(s) {unknown} not in {model.name!r}")
    layer_masks: dict[str, np.ndarray] = {}
    if isinstance(masks, str):
        if masks != "zeros":
            raise ConfigError(f"masks should be None, 'zeros' or a dict of kernel masks by layer name, got {masks!r}")
        for layer in model.layers:
            if _quant_class(layer) is not None and layer.name not in exclude:
                kernel = np.asarray(layer.kernel)
                if (kernel == 0).any():
                    layer_masks[layer.name] = kernel != 0
    elif isinstance(masks, dict):
        for name, mask in masks.items():
            if name not in names:
                raise ConfigError(f"mask for layer {name!r}, which {model.name!r} does not have")
            layer = model.get_layer(name)
            if _quant_class(layer) is None:
                raise ConfigError(f"mask for layer {name!r} ({type(layer).__name__}), which QAT does not quantize")
            if tuple(np.shape(mask)) != tuple(layer.kernel.shape):
                raise ConfigError(f"mask for {name!r} has shape {np.shape(mask)}, its kernel {tuple(layer.kernel.shape)}")
            layer_masks[name] = np.asarray(mask, bool)
    elif masks is not None:
        raise ConfigError(f"masks should be None, 'zeros' or a dict of kernel masks by layer name, got {type(masks).__name__}")
    float_layers = {
        layer.name: f"{type(layer).__name__} cannot be fake-quantized; left in float"
        for layer in model.layers
        if _quant_class(layer) is None
        and layer.weights
        and not isinstance(layer, keras.Model)
        and not isinstance(layer, (keras.layers.BatchNormalization, keras.layers.LayerNormalization))
    }
    sources: dict[str, Any] = {}
    plan = fold_plan(model, lambda layer: _quant_class(layer) is not None and layer.name not in exclude) if fold_batchnorm else {}
    absorbed = {name for chain in plan.values() for name in (chain.norm, chain.activation) if name}

    def clone(layer: Any) -> Any:
        if layer.name in absorbed:
            return FoldedAway(name=layer.name)
        quant = _quant_class(layer)
        if quant is None or layer.name in exclude:
            return layer.__class__.from_config(layer.get_config())
        sources[layer.name] = layer
        config = {**layer.get_config(), "masked": layer.name in layer_masks, "freeze_ranges_after": freeze_ranges_after}
        if layer.name in plan:
            norm = model.get_layer(plan[layer.name].norm)
            batchnorm = {"epsilon": float(norm.epsilon), "momentum": float(norm.momentum)}
            batchnorm.update(center=bool(norm.center), scale=bool(norm.scale))
            config.update(batchnorm=batchnorm, freeze_bn_after=freeze_bn_after, use_bias=True)
            config.update(activation="relu" if plan[layer.name].activation else config["activation"])
        return quant.from_config(config)

    clone_model = keras.models.clone_model(model, clone_function=clone)
    for layer, original in zip(clone_model.layers, model.layers):
        if layer.name in plan:
            layer.kernel.assign(original.kernel)
            layer.bias.assign(original.bias if original.use_bias else np.zeros(layer.bias.shape, np.float32))
            layer.set_norm(model.get_layer(plan[layer.name].norm))
        elif layer.name not in absorbed:
            for target, value in zip(layer.weights, original.weights):
                target.assign(value)
        if layer.name in layer_masks:
            layer.pqat_mask.assign(layer_masks[layer.name].astype(np.float32))
            layer.kernel.assign(np.asarray(layer.kernel) * layer_masks[layer.name])
    zeros = {name: int((~mask).sum()) for name, mask in layer_masks.items()}
    return KerasQat(clone_model, tuple(sources), float_layers, zeros, folded=tuple(plan.values()))


def _check_freeze(name: str, value: Any, least: int) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
        raise ConfigError(f"{name} should be None or an integer >= {least} (training batches), got {value!r}")


def strip_qat(model: Any) -> Any:
    """A plain clone of a fake-quant model: the original layer classes, kernels set to their fake-quantized values.

    Example::

        plain = strip_qat(run.model)   # Dense/Conv2D again; convert it with export_tflite
    """
    _check_model(model)

    def clone(layer: Any) -> Any:
        if isinstance(layer, _QUANT_TYPES):
            config = dict(layer.get_config())
            config.pop("masked", None)
            for key in ("freeze_ranges_after", "batchnorm", "freeze_bn_after"):
                config.pop(key, None)
            base = next(b for b, q in _QUANT_CLASSES if isinstance(layer, q))
            return base.from_config(config)
        return layer.__class__.from_config(layer.get_config())

    plain = keras.models.clone_model(model, clone_function=clone)
    for layer, source in zip(plain.layers, model.layers):
        if isinstance(source, _QUANT_TYPES):
            mask = np.asarray(source.pqat_mask, dtype=np.bool_) if source.pqat_mask is not None else None
            kernel, bias = np.asarray(source.kernel), np.asarray(source.bias) if source.use_bias else None
            if source.batchnorm is not None:
                depthwise = isinstance(source, keras.layers.DepthwiseConv2D)
                kernel, bias = fold_arrays(kernel, bias, source.norm_values(), source.batchnorm["epsilon"], depthwise)
            codes, scale = kernel_codes(kernel, mask, _channel_axes(source))
            layer.kernel.assign(codes.astype(np.float32) * scale)
            if bias is not None:
                layer.bias.assign(bias)
        else:
            for target, value in zip(layer.weights, source.weights):
                target.assign(value)
    return plain


def _int8_kernels(flatbuffer: bytes) -> list[tuple[str, np.ndarray]]:
    from prunekit.artifacts.litert import interpreter_class

    interpreter = interpreter_class()(model_content=flatbuffer)
    interpreter.allocate_tensors()
    found = []
    for detail in interpreter.get_tensor_details():
        if detail["dtype"] == np.int8 and len(detail["shape"]) >= 2:
            try:
                found.append((detail["name"], np.array(interpreter.get_tensor(detail["index"]))))
            except ValueError:
                continue
    return found


def export_tflite(
    model: Any,
    representative_data: Any,
    output_path: str | os.PathLike | None = None,
    *,
    calibration_samples: int = 200,
) -> tuple[bytes, dict[str, int]]:
    """Full-integer int8 TFLite of a fake-quant model (stripped first); returns the flatbuffer and int8 kernel zeros.

    For PQAT layers the int8 kernel must hold exactly the mask's zeros, otherwise
    :class:`~prunekit.errors.ExportError` (and nothing is written).

    Example::

        flatbuffer, zeros = export_tflite(run.model, split.x_val, "model.int8.tflite")
    """
    from prunekit.keras.deploy.tflite import convert_to_tflite

    plain = strip_qat(model)
    flatbuffer = convert_to_tflite(plain, "int8", representative_data, calibration_samples=calibration_samples)
    kernels = _int8_kernels(flatbuffer)
    zeros: dict[str, int] = {}
    for layer in model.layers:
        if not isinstance(layer, _QUANT_TYPES):
            continue
        size = int(np.prod(layer.kernel.shape))
        candidates = [(n, k) for n, k in kernels if k.size == size and f"{layer.name}" in n] or [
            (n, k) for n, k in kernels if k.size == size
        ]
        if layer.pqat_mask is None:
            if candidates:
                zeros[layer.name] = int((candidates[0][1] == 0).sum())
            continue
        expected = int((np.asarray(layer.pqat_mask) == 0).sum())
        counts = [int((k == 0).sum()) for _, k in candidates]
        if expected not in counts:
            raise ExportError(
                f"the int8 TFLite kernel of {layer.name!r} has {counts[:1] or 'no'} zero(s) but its pruning mask has {expected}; "
                "the export would not keep the pruned sparsity"
            )
        zeros[layer.name] = expected
    if output_path is not None:
        from prunekit.core.atomic import atomic_write_bytes

        atomic_write_bytes(output_path, flatbuffer)
    return flatbuffer, zeros


def _train(
    model: Any, x: Any, y: Any, epochs: int, lr: float, batch_size: int, validation_data: Any, callbacks: Any
) -> list[dict[str, float]]:
    if not isinstance(epochs, int) or epochs < 0:
        raise ConfigError(f"epochs should be an integer >= 0, got {epochs!r}")
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = model.fit(
        x, y, epochs=epochs, batch_size=batch_size, validation_data=validation_data, callbacks=list(callbacks), verbose=0
    ).history
    return epoch_records(history)


def qat(
    model: Any,
    x: Any,
    y: Any,
    *,
    epochs: int,
    lr: float = 1e-4,
    batch_size: int = 64,
    masks: Any = None,
    exclude: Sequence[str] = (),
    fold_batchnorm: bool = True,
    freeze_ranges_after: int | None = None,
    freeze_bn_after: int | None = FREEZE_BN_AFTER,
    validation_data: Any = None,
    callbacks: Sequence[Any] = (),
) -> KerasQat:
    """Clone ``model`` with fake quantization and fine-tune it on ``(x, y)`` (a classifier with logits).

    Returns the :class:`KerasQat` run; export with :func:`export_tflite`, or :func:`strip_qat` for
    the plain model. ``masks`` as in :func:`quantize_model` (PQAT: see :func:`pqat`).

    Example::

        run = qat(model, split.x_train, split.y_train, epochs=2)
        flatbuffer, _ = export_tflite(run.model, split.x_val, "model.int8.tflite")
    """
    run = quantize_model(
        model,
        masks=masks,
        exclude=exclude,
        fold_batchnorm=fold_batchnorm,
        freeze_ranges_after=freeze_ranges_after,
        freeze_bn_after=freeze_bn_after,
    )
    run.history = _train(run.model, x, y, epochs, lr, batch_size, validation_data, callbacks)
    return run


def pqat(model: Any, x: Any, y: Any, *, epochs: int, masks: Any = "zeros", **options: Any) -> KerasQat:
    """Sparsity-preserving QAT: :func:`qat` keeping the model's pruned zeros (a model with pruning state is stripped first).

    A model without zeros in any quantized kernel is an error: prune first, or use :func:`qat`.

    Example::

        run = pqat(strip_pruning(pruned), split.x_train, split.y_train, epochs=2)
    """
    from prunekit.keras.unstructured.pruning import strip_pruning
    from prunekit.keras.unstructured.state import prunings

    known = {"lr", "batch_size", "validation_data", "callbacks", "exclude", "fold_batchnorm"}
    known |= {"freeze_ranges_after", "freeze_bn_after"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"pqat got unknown option(s) {unknown}")
    if prunings(model):
        model = strip_pruning(model)
    run = quantize_model(
        model,
        masks=masks,
        exclude=options.get("exclude", ()),
        fold_batchnorm=options.get("fold_batchnorm", True),
        freeze_ranges_after=options.get("freeze_ranges_after"),
        freeze_bn_after=options.get("freeze_bn_after", FREEZE_BN_AFTER),
    )
    if not any(run.mask_zeros.values()):
        raise ConfigError(f"PQAT found no pruning masks in {model.name!r} (no zero weights); prune first, or use qat")
    run.history = _train(
        run.model,
        x,
        y,
        epochs,
        options.get("lr", 1e-4),
        options.get("batch_size", 64),
        options.get("validation_data"),
        options.get("callbacks", ()),
    )
    return run
