"""The fake-quant Keras layers of QAT/PQAT: ``Dense``, ``Conv1D/2D/3D`` and ``DepthwiseConv2D`` subclasses
computing with int8 fake-quantized kernels, inputs and outputs (see :mod:`prunekit.keras.recover.qat`).

They are registered Keras serializables (package ``"prunekit"``) and save every variable (kernel, bias,
observed ranges, the training-batch counter, the PQAT mask, the folded BatchNormalization's state), so
``model.save`` and ``keras.models.load_model`` resume QAT exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from prunekit.errors import ConfigError
from prunekit.keras.recover.fold import FoldedBatchNorm

WEIGHT_QMAX = 127


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
