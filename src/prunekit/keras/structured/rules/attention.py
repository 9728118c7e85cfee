"""The rule for ``keras.layers.MultiHeadAttention``: its heads are a group of their own (removed whole),
its output projection makes new channels, and its query/key/value projections read their inputs'
channels like a Dense."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from prunekit.keras.structured.rules.base import ChannelRule, Coupling, Shrink

L = keras.layers
STREAMS = ("query", "key", "value")


def _blocked(layer: Any, ctx: Coupling) -> str | None:
    """Why a MultiHeadAttention call cannot be rewritten, or ``None``."""
    if type(layer) is not L.MultiHeadAttention:
        return "a MultiHeadAttention subclass whose call structured pruning does not know"
    if not (ctx.has_input("query") and ctx.has_input("value")):
        return "whose query and value inputs are not traced"
    if ctx.argument("return_attention_scores"):
        return "whose attention scores (one slice per head) are a model tensor"
    output_shape = ctx.config["output_shape"]
    if isinstance(output_shape, (list, tuple)) and len(output_shape) != 1:
        return f"whose output_shape {tuple(output_shape)} has more than one dimension"
    return None


class MultiHeadAttentionRule(ChannelRule):
    """Heads: dimension 1 of the query/key/value kernels (0 of their biases) and 0 of the output kernel."""

    def couple(self, layer: Any, ctx: Coupling) -> None:
        why = _blocked(layer, ctx)
        if why is not None:
            ctx.opaque(why)
            return
        streams = {role: ctx.input(role if ctx.has_input(role) else "value") for role in STREAMS}
        for name in ("query_mask", "value_mask", "key_mask", "attention_mask"):
            if ctx.has_input(name):
                ctx.fix(ctx.input(name), f"it is a mask of MultiHeadAttention layer {layer.name!r}")
        heads = ctx.produce_heads("output_dense.kernel", 0)
        for role, channels in streams.items():
            kernel = ctx.weight(f"{role}_dense.kernel")
            ctx.tie(kernel[0], channels)
            ctx.tie(kernel[1], heads)
            if ctx.has_weight(f"{role}_dense.bias"):
                ctx.tie(ctx.weight(f"{role}_dense.bias")[0], heads)
        out = ctx.produce("output_dense.kernel", -1)
        if ctx.has_weight("output_dense.bias"):
            ctx.tie(ctx.weight("output_dense.bias")[0], out)
        ctx.set_output(out)

    def shrink(self, layer: Any, ctx: Shrink) -> dict[str, Any]:
        """``num_heads``, and ``output_shape`` unless the output still defaults to the query's width."""
        update: dict[str, Any] = {"num_heads": ctx.shape("output_dense.kernel")[0]}
        width = ctx.output_width()
        if ctx.config["output_shape"] is not None or width != ctx.input_width("query"):
            update["output_shape"] = width
        return update

    def filters(self, layer: Any, kind: str) -> np.ndarray | None:
        """For heads: each head's query, key, value and output kernel slices joined, as ``(num_heads, fan)``."""
        if kind != "heads":
            return None
        projections = (layer.query_dense, layer.key_dense, layer.value_dense)
        kernels = [np.moveaxis(dense.kernel.numpy(), -2, 0) for dense in projections] + [layer.output_dense.kernel.numpy()]
        return np.concatenate([kernel.reshape(layer.num_heads, -1) for kernel in kernels], axis=1)


ATTENTION_RULES: dict[type, ChannelRule] = {L.MultiHeadAttention: MultiHeadAttentionRule()}
