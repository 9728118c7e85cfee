"""Rules for LSTM, GRU and SimpleRNN, bare or wrapped in Bidirectional.

A recurrent layer's ``units`` hidden units are its channels: unit ``j`` is column ``g*units + j`` of
every gate ``g`` of ``kernel``, ``recurrent_kernel`` and ``bias`` (any leading axis, as GRU's
``reset_after`` bias ``(2, 3*units)``) and row ``j`` of ``recurrent_kernel``; the sequence's
features are ``kernel``'s rows. A Bidirectional's unit ``j`` is one channel of both directions, at
``j`` and ``units + j`` of the output with ``merge_mode="concat"``, at ``j`` otherwise.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from prunekit.keras.structured.rules.base import ChannelRule, Coupling, Shrink

L = keras.layers
RECURRENT = (L.LSTM, L.GRU, L.SimpleRNN)


def _blocked(layer: Any, ctx: Coupling) -> str | None:
    """Why a recurrent call cannot be rewritten, or ``None``."""
    if type(layer) not in RECURRENT:
        return "a recurrent subclass whose cell structured pruning does not know"
    config = layer.get_config()
    if config.get("return_state"):
        return "whose states are model tensors (build it with return_state=False to prune it)"
    if config.get("stateful"):
        return "which keeps its states between batches (build it with stateful=False to prune it)"
    if ctx.num_inputs > ctx.has_input("sequences") + ctx.has_input("mask"):
        return "with an initial state (its shape follows the units)"
    return None


def _fix_masks(layer: Any, ctx: Coupling) -> None:
    if ctx.has_input("mask"):
        ctx.fix(ctx.input("mask"), f"it is a mask of {type(layer).__name__} layer {layer.name!r}")


def _couple_cell(ctx: Coupling, prefix: str, sequence: np.ndarray, units: np.ndarray) -> None:
    """Tie one direction's ``kernel`` rows to the sequence and every gate's unit columns to ``units``."""
    kernel, recurrent = ctx.weight(f"{prefix}cell.kernel"), ctx.weight(f"{prefix}cell.recurrent_kernel")
    columns = np.tile(units, len(kernel[1]) // len(units))
    ctx.tie(kernel[0], sequence)
    ctx.tie(kernel[1], columns)
    ctx.tie(recurrent[0], units)
    ctx.tie(recurrent[1], columns)
    if ctx.has_weight(f"{prefix}cell.bias"):
        ctx.tie(ctx.weight(f"{prefix}cell.bias")[-1], columns)


def _unit_rows(layer: Any) -> np.ndarray:
    """Each hidden unit's ``kernel`` and ``recurrent_kernel`` columns of every gate, as ``(units, fan)``."""
    kernel, recurrent = (np.asarray(w.numpy()) for w in (layer.cell.kernel, layer.cell.recurrent_kernel))
    fan = np.concatenate([kernel, recurrent])
    units = layer.cell.units
    return fan.reshape(len(fan), fan.shape[1] // units, units).transpose(2, 1, 0).reshape(units, -1)


class RecurrentRule(ChannelRule):
    """LSTM/GRU/SimpleRNN: the hidden units are new channels; the sequence's features are read."""

    def couple(self, layer: Any, ctx: Coupling) -> None:
        why = _blocked(layer, ctx)
        if why is not None:
            ctx.opaque(why)
            return
        _fix_masks(layer, ctx)
        units = ctx.produce("cell.recurrent_kernel", 0)
        _couple_cell(ctx, "", ctx.input("sequences"), units)
        ctx.set_output(units)

    def shrink(self, layer: Any, ctx: Shrink) -> dict[str, Any]:
        return {"units": ctx.shape("cell.recurrent_kernel")[0]}

    def filters(self, layer: Any, kind: str) -> np.ndarray:
        return _unit_rows(layer)


class BidirectionalRule(ChannelRule):
    """Bidirectional(LSTM/GRU/SimpleRNN): unit ``j`` of both directions is one channel."""

    def couple(self, layer: Any, ctx: Coupling) -> None:
        forward, backward = layer.forward_layer, layer.backward_layer
        if type(forward) not in RECURRENT or type(backward) not in RECURRENT:
            ctx.opaque(f"which wraps {type(forward).__name__}, not an LSTM, GRU or SimpleRNN")
            return
        if layer.merge_mode is None:
            ctx.opaque("whose merge_mode=None returns two tensors (use 'concat' to prune it)")
            return
        if forward.units != backward.units:
            ctx.opaque("whose forward and backward layers have different units")
            return
        why = _blocked(forward, ctx)
        if why is not None:
            ctx.opaque(why)
            return
        _fix_masks(layer, ctx)
        sequence = ctx.input("sequences")
        units = ctx.produce("forward_layer.cell.recurrent_kernel", 0)
        _couple_cell(ctx, "forward_layer.", sequence, units)
        _couple_cell(ctx, "backward_layer.", sequence, units)
        ctx.set_output(np.tile(units, 2 if layer.merge_mode == "concat" else 1))

    def shrink(self, layer: Any, ctx: Shrink) -> dict[str, Any]:
        units = ctx.shape("forward_layer.cell.recurrent_kernel")[0]
        return {"layer.config.units": units, "backward_layer.config.units": units}

    def filters(self, layer: Any, kind: str) -> np.ndarray:
        return np.concatenate([_unit_rows(layer.forward_layer), _unit_rows(layer.backward_layer)], axis=1)


RECURRENT_RULES: dict[type, ChannelRule] = {**dict.fromkeys(RECURRENT, RecurrentRule()), L.Bidirectional: BidirectionalRule()}

__all__ = ["RECURRENT_RULES", "BidirectionalRule", "RecurrentRule"]
