"""Fold BatchNormalization (and a ReLU after it) into the Dense/Conv before it, as the TFLite converter does.

TFLite's int8 model has no BatchNormalization: the converter folds it into the preceding
convolution's kernel and bias, fuses a following ReLU, and quantizes only the tensor after them.
QAT that fake-quantizes the convolution's own output (before BN) trains against a rounding the
exported model never does, and misses the one it does. So before QAT the chain
``Dense/Conv -> BatchNormalization [-> ReLU]`` becomes one layer with folded weights
(``kernel * gamma / sqrt(var + eps)``, ``(bias - mean) * gamma / sqrt(var + eps) + beta``) and
``activation="relu"``, and the BN and ReLU layers become :class:`FoldedAway` pass-throughs (same names), so the
fake-quant forward is the arithmetic of the exported file (Jacob et al. 2018, section 3.2; BN
statistics frozen, as Krishnamoorthi 2018 recommends for QAT fine-tuning).

In QAT the folded layer keeps the BatchNormalization's parameters (:class:`FoldedBatchNorm`) rather
than baking them into its weights: the kernel the optimizer updates is the layer's own, ``gamma``
and ``beta`` train, and the kernel that is fake-quantized is ``kernel * gamma / sqrt(var + eps)``,
the one the converter will quantize. The output is normalised with the frozen moving statistics,
which is exactly the int8 model's arithmetic (the default, ``freeze_bn_after=0``), or, for the
first ``freeze_bn_after`` training batches, with the batch statistics (the moving ones updated),
as a float fine-tune does (the "BN folding" of Jacob et al. 2018, section 3.2, and of PyTorch's
``ConvBn2d`` with ``freeze_bn_stats``). Baking BN into the weights instead would freeze ``gamma``
and ``beta`` and leave Adam, whose step is about ``lr`` per weight whatever its size, working on
weights ``gamma / sqrt(var + eps)`` times larger (17x on the digits CNN's first convolution): the
same learning rate would move those kernels up to 17x less than a float fine-tune does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="prunekit")
class FoldedAway(keras.layers.Layer):
    """Stands where a folded BatchNormalization or ReLU was (same name): passes its input through.

    Example::

        FoldedAway(name="bn1")(x)   # x
    """

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        return inputs

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape


@dataclass(frozen=True)
class FoldedChain:
    """One ``Dense/Conv -> BatchNormalization [-> ReLU]`` chain folded into its first layer."""

    layer: str
    norm: str | None
    activation: str | None


def _single_consumer(layer: Any) -> Any | None:
    nodes = getattr(layer, "_outbound_nodes", [])
    if len(getattr(layer, "_inbound_nodes", [])) != 1 or len(nodes) != 1:
        return None
    return nodes[0].operation


def _channel_axis(layer: Any) -> int:
    rank = len(layer.output.shape)
    return 1 if getattr(layer, "data_format", "channels_last") == "channels_first" else rank - 1


def _folds_into(layer: Any, norm: Any) -> bool:
    """A BatchNormalization over exactly ``layer``'s output channels, fed only by it."""
    if not isinstance(norm, keras.layers.BatchNormalization) or len(norm._inbound_nodes) != 1:
        return False
    axis = norm.axis if isinstance(norm.axis, int) else (norm.axis[0] if len(norm.axis) == 1 else None)
    if axis is None:
        return False
    rank = len(layer.output.shape)
    return axis % rank == _channel_axis(layer)


def _is_plain_relu(layer: Any) -> bool:
    if isinstance(layer, keras.layers.ReLU):
        config = layer.get_config()
        return config.get("max_value") is None and not config.get("negative_slope") and not config.get("threshold")
    if isinstance(layer, keras.layers.Activation):
        return keras.activations.serialize(layer.activation) == "relu" or layer.activation is keras.activations.relu
    return False


def fold_plan(model: Any, foldable: Callable[[Any], bool]) -> dict[str, FoldedChain]:
    """The chains to fold, by first-layer name: ``foldable(layer)`` layers with a linear activation whose only
    consumer is a BatchNormalization on their channels (and, optionally, a plain ReLU after it).

    Example::

        fold_plan(digits_cnn(), lambda layer: isinstance(layer, keras.layers.Conv2D))   # conv1 -> bn1 -> relu1, ...
    """
    plan: dict[str, FoldedChain] = {}
    for layer in model.layers:
        if not foldable(layer) or keras.activations.serialize(layer.activation) != "linear":
            continue
        norm = _single_consumer(layer)
        if norm is None or not _folds_into(layer, norm):
            continue
        after = _single_consumer(norm)
        relu = after if after is not None and _is_plain_relu(after) and len(after._inbound_nodes) == 1 else None
        plan[layer.name] = FoldedChain(layer.name, norm.name, None if relu is None else relu.name)
    return plan


def fold_arrays(
    kernel: np.ndarray, bias: np.ndarray | None, norm: dict[str, np.ndarray], epsilon: float, depthwise: bool
) -> tuple[np.ndarray, np.ndarray]:
    """A kernel and bias with BatchNormalization's ``gamma``, ``beta``, ``moving_mean``, ``moving_variance`` folded in.

    Example::

        kernel, bias = fold_arrays(k, None, {"gamma": g, "beta": b, "moving_mean": m, "moving_variance": v}, 1e-3, False)
    """
    scale = norm["gamma"] / np.sqrt(norm["moving_variance"] + epsilon)
    bias = np.zeros_like(scale) if bias is None else bias
    if depthwise:  # output channel = input channel * multiplier + m
        folded = kernel * scale.reshape(kernel.shape[-2], kernel.shape[-1])
    else:
        folded = kernel * scale
    return folded.astype(np.float32), ((bias - norm["moving_mean"]) * scale + norm["beta"]).astype(np.float32)


def norm_arrays(norm: Any) -> dict[str, np.ndarray]:
    """A BatchNormalization's ``gamma``, ``beta``, ``moving_mean`` and ``moving_variance`` (ones/zeros where it has none).

    Example::

        norm_arrays(model.get_layer("bn1"))["gamma"].shape   # (32,)
    """
    channels = int(np.asarray(norm.moving_mean).shape[0])
    return {
        "gamma": np.asarray(norm.gamma, np.float32) if norm.scale else np.ones(channels, np.float32),
        "beta": np.asarray(norm.beta, np.float32) if norm.center else np.zeros(channels, np.float32),
        "moving_mean": np.asarray(norm.moving_mean, np.float32),
        "moving_variance": np.asarray(norm.moving_variance, np.float32),
    }


def folded_weights(layer: Any, norm: Any) -> tuple[np.ndarray, np.ndarray]:
    """``layer``'s kernel and bias with ``norm`` (its BatchNormalization, inference statistics) folded in.

    Example::

        kernel, bias = folded_weights(model.get_layer("conv1"), model.get_layer("bn1"))
    """
    bias = np.asarray(layer.bias, np.float32) if layer.use_bias else None
    depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
    return fold_arrays(np.asarray(layer.kernel, np.float32), bias, norm_arrays(norm), norm.epsilon, depthwise)


class FoldedBatchNorm:
    """Mixin for a fake-quant layer that absorbed a BatchNormalization: its ``gamma``/``beta`` (trainable),
    moving statistics, the folded kernel to fake-quantize and the normalised output (see the module docstring).

    ``batchnorm`` is ``None`` (nothing folded) or ``{"epsilon", "momentum", "center", "scale"}`` of the BN.
    """

    batchnorm: dict[str, Any] | None = None
    freeze_bn_after: int | None = None

    def _add_norm_state(self, channels: int) -> None:
        if self.batchnorm is None:
            return
        vector = {"shape": (channels,)}
        self.bn_gamma = self.add_weight(name="bn_gamma", initializer="ones", trainable=bool(self.batchnorm["scale"]), **vector)
        self.bn_beta = self.add_weight(name="bn_beta", initializer="zeros", trainable=bool(self.batchnorm["center"]), **vector)
        self.bn_mean = self.add_weight(name="bn_moving_mean", initializer="zeros", trainable=False, **vector)
        self.bn_variance = self.add_weight(name="bn_moving_variance", initializer="ones", trainable=False, **vector)

    def set_norm(self, norm: Any) -> None:
        """Copy a BatchNormalization's parameters and statistics into this layer."""
        values = norm_arrays(norm)
        for weight, key in zip(
            (self.bn_gamma, self.bn_beta, self.bn_mean, self.bn_variance), ("gamma", "beta", "moving_mean", "moving_variance")
        ):
            weight.assign(values[key])

    def norm_values(self) -> dict[str, np.ndarray]:
        """The folded BatchNormalization's parameters and moving statistics, as :func:`fold_arrays` takes them."""
        return {
            "gamma": np.asarray(self.bn_gamma),
            "beta": np.asarray(self.bn_beta),
            "moving_mean": np.asarray(self.bn_mean),
            "moving_variance": np.asarray(self.bn_variance),
        }

    def _norm_scale(self) -> Any:
        return self.bn_gamma / ops.sqrt(self.bn_variance + self.batchnorm["epsilon"])

    def _fold_kernel(self, kernel: Any) -> Any:
        """The kernel the int8 model holds: ``kernel * gamma / sqrt(moving variance + eps)`` per output channel."""
        if self.batchnorm is None:
            return kernel
        scale = self._norm_scale()
        if isinstance(self, keras.layers.DepthwiseConv2D):
            return kernel * ops.reshape(scale, tuple(kernel.shape[-2:]))
        return kernel * scale

    def _norm_output(self, outputs: Any, training: bool, steps: Any) -> Any:
        """From the folded kernel's output to the BatchNormalization's: the frozen fold, or batch statistics in training."""
        shape = self._bias_shape()
        scale = ops.reshape(self._norm_scale(), shape)
        bias = ops.reshape(self.bias, shape)
        frozen_out = outputs + (bias - ops.reshape(self.bn_mean, shape)) * scale + ops.reshape(self.bn_beta, shape)
        if not training or self.freeze_bn_after == 0:
            return frozen_out
        eps, momentum = self.batchnorm["epsilon"], self.batchnorm["momentum"]
        raw = outputs / ops.where(ops.equal(scale, 0.0), 1.0, scale) + bias  # the convolution's own output
        rank = len(outputs.shape)
        channel = 1 if getattr(self, "data_format", "channels_last") == "channels_first" else rank - 1
        mean, variance = ops.moments(raw, axes=tuple(i for i in range(rank) if i != channel))
        gamma, beta = ops.reshape(self.bn_gamma, shape), ops.reshape(self.bn_beta, shape)
        batch_out = (raw - ops.reshape(mean, shape)) / ops.sqrt(ops.reshape(variance, shape) + eps) * gamma + beta
        new_mean = momentum * self.bn_mean + (1 - momentum) * mean
        new_variance = momentum * self.bn_variance + (1 - momentum) * variance
        if self.freeze_bn_after is None:
            self.bn_mean.assign(new_mean)
            self.bn_variance.assign(new_variance)
            return batch_out
        frozen = ops.greater_equal(steps, float(self.freeze_bn_after))
        self.bn_mean.assign(ops.where(frozen, self.bn_mean, new_mean))
        self.bn_variance.assign(ops.where(frozen, self.bn_variance, new_variance))
        return ops.where(frozen, frozen_out, batch_out)
