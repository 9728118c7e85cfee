"""Rules for Keras' built-in layers: producers (Dense, Conv, SeparableConv, Embedding), per-channel
layers (activations, pooling, dropout, BatchNormalization, DepthwiseConv), Flatten and merges.

Each is a :class:`~prunekit.keras.structured.rules.base.ChannelRule`, the same interface a user's rule
implements; :data:`BUILTIN_RULES` maps the layer classes to them (the attention and recurrent rules
live beside this module).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from prunekit.keras.structured.rules.base import ChannelRule, Coupling, Shrink

L = keras.layers
CHANNEL_MIXING_ACTIVATIONS = ("softmax", "log_softmax")


def is_channel_axis(axis: Any, shape: tuple) -> bool:
    """Whether ``axis`` (an int, or a one-element list) is the last axis of ``shape``."""
    axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
    return isinstance(axis, int) and (axis == -1 or axis == len(shape) - 1)


def channels_last_ungrouped(ctx: Coupling) -> bool:
    """Whether a convolution's channels are its last axis and it has one group; says why not otherwise."""
    if ctx.config.get("data_format", "channels_last") == "channels_last" and ctx.config.get("groups", 1) == 1:
        return True
    ctx.opaque("(channels_first or grouped convolutions are not rewritten)")
    return False


def single_input(ctx: Coupling) -> bool:
    """Whether the layer was called on one tensor; says why not otherwise."""
    if ctx.num_inputs == 1:
        return True
    ctx.opaque("which has several inputs")
    return False


class PassThroughRule(ChannelRule):
    """A per-channel layer without channel weights (activations, dropout, pooling, padding): output
    channel ``c`` is input channel ``c``."""

    def couple(self, layer: Any, ctx: Coupling) -> None:
        if single_input(ctx):
            ctx.pass_through(0)


class ActivationRule(ChannelRule):
    """``Activation``: per channel, except softmax-like activations, which mix the channels."""

    def couple(self, layer: Any, ctx: Coupling) -> None:
        activation = ctx.config.get("activation")
        if activation in CHANNEL_MIXING_ACTIVATIONS:
            ctx.opaque(f"whose {activation} mixes channels")
        elif single_input(ctx):
            ctx.pass_through(0)


class BatchNormalizationRule(ChannelRule):
    """Its gamma, beta and moving statistics hold one entry per channel of the normalised (last) axis."""

    def couple(self, layer: Any, ctx: Coupling) -> None:
        if not single_input(ctx):
            return
        if not is_channel_axis(ctx.config["axis"], ctx.input_shape(0)):
            ctx.opaque("which normalises a non-channel axis")
            return
        channels = ctx.input(0)
        for name in ("gamma", "beta", "moving_mean", "moving_variance"):
            if ctx.has_weight(name):
                ctx.tie(ctx.weight(name)[0], channels)
        ctx.pass_through(0)


class FixedRule(ChannelRule):
    """A layer whose channels never move, for the reason given (LayerNormalization's mean and variance)."""

    def __init__(self, why: str):
        self.why = why

    def couple(self, layer: Any, ctx: Coupling) -> None:
        ctx.opaque(self.why)


class KernelRule(ChannelRule):
    """Dense and Conv1D/2D/3D: ``kernel[..., in, out]`` reads the input channels and makes ``units``/``filters``
    new ones, with ``bias[out]``."""

    def couple(self, layer: Any, ctx: Coupling) -> None:
        if not (channels_last_ungrouped(ctx) and single_input(ctx)):
            return
        ctx.tie(ctx.weight("kernel")[-2], ctx.input(0))
        out = ctx.produce("kernel", -1)
        if ctx.has_weight("bias"):
            ctx.tie(ctx.weight("bias")[0], out)
        ctx.set_output(out)

    def shrink(self, layer: Any, ctx: Shrink) -> dict[str, Any]:
        key = "units" if "units" in ctx.config else "filters"
        return {key: ctx.shape("kernel")[-1]}


class SeparableConvRule(KernelRule):
    """SeparableConv1D/2D: ``depthwise_kernel[..., in, multiplier]`` then ``pointwise_kernel[..., in*multiplier, out]``."""

    def couple(self, layer: Any, ctx: Coupling) -> None:
        if not (channels_last_ungrouped(ctx) and single_input(ctx)):
            return
        channels = ctx.input(0)
        depthwise = ctx.weight("depthwise_kernel")
        ctx.tie(depthwise[-2], channels)
        ctx.tie(ctx.weight("pointwise_kernel")[-2], np.repeat(channels, len(depthwise[-1])))
        out = ctx.produce("pointwise_kernel", -1)
        if ctx.has_weight("bias"):
            ctx.tie(ctx.weight("bias")[0], out)
        ctx.set_output(out)

    def shrink(self, layer: Any, ctx: Shrink) -> dict[str, Any]:
        return {"filters": ctx.shape("pointwise_kernel")[-1]}


class DepthwiseConvRule(ChannelRule):
    """DepthwiseConv1D/2D: each input channel becomes ``depth_multiplier`` output channels."""

    def couple(self, layer: Any, ctx: Coupling) -> None:
        if not (channels_last_ungrouped(ctx) and single_input(ctx)):
            return
        channels = ctx.input(0)
        kernel = ctx.weight("kernel")
        ctx.tie(kernel[-2], channels)
        out = np.repeat(channels, len(kernel[-1]))
        if ctx.has_weight("bias"):
            ctx.tie(ctx.weight("bias")[0], out)
        ctx.set_output(out)


class EmbeddingRule(ChannelRule):
    """Its input is token ids (never removed); the columns of ``embeddings`` are new channels."""

    def couple(self, layer: Any, ctx: Coupling) -> None:
        if not single_input(ctx):
            return
        ctx.fix(ctx.input(0), f"it feeds Embedding layer {layer.name!r} as token ids")
        ctx.set_output(ctx.produce("embeddings", 1))

    def shrink(self, layer: Any, ctx: Shrink) -> dict[str, Any]:
        return {"output_dim": ctx.shape("embeddings")[1]}


class FlattenRule(ChannelRule):
    """Flatten of a channels-last tensor: the channels repeat once per spatial position."""

    def couple(self, layer: Any, ctx: Coupling) -> None:
        if single_input(ctx):
            spatial = int(np.prod(ctx.input_shape(0)[1:-1], dtype=np.int64))
            ctx.set_output(np.tile(ctx.input(0), spatial))


class MergeRule(ChannelRule):
    """Element-wise merges (Add, Multiply, ...): channel ``c`` of every input is one channel."""

    def couple(self, layer: Any, ctx: Coupling) -> None:
        inputs = [ctx.input(i) for i in range(ctx.num_inputs)]
        if len({len(labels) for labels in inputs}) != 1:
            ctx.opaque("which broadcasts inputs of different widths")
            return
        for other in inputs[1:]:
            ctx.tie(inputs[0], other)
        ctx.set_output(inputs[0])


class ConcatenateRule(MergeRule):
    """Concatenate on the channel axis joins its inputs' channels; on another axis it ties them."""

    def couple(self, layer: Any, ctx: Coupling) -> None:
        if is_channel_axis(ctx.config["axis"], ctx.input_shape(0)):
            ctx.set_output(np.concatenate([ctx.input(i) for i in range(ctx.num_inputs)]))
        else:
            super().couple(layer, ctx)


_PASS_THROUGH = (
    L.ReLU,
    L.LeakyReLU,
    L.ELU,
    L.Dropout,
    L.SpatialDropout1D,
    L.SpatialDropout2D,
    L.SpatialDropout3D,
    L.GaussianNoise,
    L.GaussianDropout,
    L.AlphaDropout,
    L.ActivityRegularization,
    L.Identity,
    L.MaxPooling1D,
    L.MaxPooling2D,
    L.MaxPooling3D,
    L.AveragePooling1D,
    L.AveragePooling2D,
    L.AveragePooling3D,
    L.GlobalAveragePooling1D,
    L.GlobalAveragePooling2D,
    L.GlobalAveragePooling3D,
    L.GlobalMaxPooling1D,
    L.GlobalMaxPooling2D,
    L.GlobalMaxPooling3D,
    L.ZeroPadding1D,
    L.ZeroPadding2D,
    L.ZeroPadding3D,
    L.Cropping1D,
    L.Cropping2D,
    L.Cropping3D,
    L.UpSampling1D,
    L.UpSampling2D,
    L.UpSampling3D,
)

LAYER_RULES: dict[type, ChannelRule] = {
    **dict.fromkeys(_PASS_THROUGH, PassThroughRule()),
    **dict.fromkeys((L.Dense, L.Conv1D, L.Conv2D, L.Conv3D), KernelRule()),
    **dict.fromkeys((L.SeparableConv1D, L.SeparableConv2D), SeparableConvRule()),
    **dict.fromkeys((L.DepthwiseConv1D, L.DepthwiseConv2D), DepthwiseConvRule()),
    **dict.fromkeys((L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum), MergeRule()),
    L.Concatenate: ConcatenateRule(),
    L.Flatten: FlattenRule(),
    L.Embedding: EmbeddingRule(),
    L.Activation: ActivationRule(),
    L.BatchNormalization: BatchNormalizationRule(),
    L.LayerNormalization: FixedRule("whose mean and variance mix the channels it normalises"),
}
