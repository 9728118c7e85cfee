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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np


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


def folded_weights(layer: Any, norm: Any) -> tuple[np.ndarray, np.ndarray]:
    """``layer``'s kernel and bias with ``norm`` (its BatchNormalization, inference statistics) folded in.

    Example::

        kernel, bias = folded_weights(model.get_layer("conv1"), model.get_layer("bn1"))
    """
    channels = int(np.asarray(norm.moving_mean).shape[0])
    gamma = np.asarray(norm.gamma) if norm.scale else np.ones(channels, np.float32)
    beta = np.asarray(norm.beta) if norm.center else np.zeros(channels, np.float32)
    scale = gamma / np.sqrt(np.asarray(norm.moving_variance) + norm.epsilon)
    kernel = np.asarray(layer.kernel, np.float32)
    bias = np.asarray(layer.bias, np.float32) if layer.use_bias else np.zeros(channels, np.float32)
    if isinstance(layer, keras.layers.DepthwiseConv2D):  # output channel = input channel * multiplier + m
        folded = kernel * scale.reshape(kernel.shape[-2], kernel.shape[-1])
    else:
        folded = kernel * scale
    return folded.astype(np.float32), ((bias - np.asarray(norm.moving_mean)) * scale + beta).astype(np.float32)
