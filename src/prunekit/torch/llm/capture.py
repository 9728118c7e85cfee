"""Capture what a causal LM feeds its first decoder block, and replay blocks on captured inputs.

The embeddings run once over the calibration tokens; a forward pre-hook on the first block
records the block's inputs (hidden states plus every extra positional/keyword argument the model
passes: attention mask, position ids, rotary ``position_embeddings``...) and raises a private
exception that stops the forward there, so no block and no LM head runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_map_only

from prunekit.errors import ConfigError
from prunekit.torch.llm.discovery import DecoderStack


class _StopForward(Exception):
    """Raised by the capture hook once the first block's inputs are recorded."""


@dataclass
class BlockBatch:
    """One calibration batch at the door of a block: its hidden states and the block's other arguments."""

    hidden: torch.Tensor
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    hidden_in_kwargs: bool = False

    def to(self, device: torch.device | str) -> BlockBatch:
        """This batch with every tensor moved to ``device``."""

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device)

        return BlockBatch(
            self.hidden.to(device),
            tree_map_only(torch.Tensor, move, self.args),
            tree_map_only(torch.Tensor, move, self.kwargs),
            self.hidden_in_kwargs,
        )


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter."""
    return next(model.parameters()).device


def capture_block_inputs(model: nn.Module, stack: DecoderStack, tokens: torch.Tensor, batch_size: int) -> list[BlockBatch]:
    """Run ``tokens`` (``[n, L]``) through the embeddings in batches and capture the first block's inputs per batch.

    Example::

        batches = capture_block_inputs(model, find_decoder_stack(model), tokens, batch_size=4)
        batches[0].hidden.shape  # [4, L, hidden]
    """
    captured: list[BlockBatch] = []

    def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if args:
            captured.append(BlockBatch(args[0].detach(), tuple(args[1:]), dict(kwargs)))
        elif "hidden_states" in kwargs:
            rest = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            captured.append(BlockBatch(kwargs["hidden_states"].detach(), (), rest, hidden_in_kwargs=True))
        else:
            raise ConfigError(f"could not find the hidden states among the inputs of block {stack.block_name(0)!r}")
        raise _StopForward

    device = model_device(model)
    handle = stack.blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for start in range(0, tokens.shape[0], batch_size):
                batch = tokens[start : start + batch_size].to(device)
                try:
                    _call_model(model, batch)
                except _StopForward:
                    continue
                raise ConfigError(f"the model's forward never reached its decoder block {stack.block_name(0)!r}")
    finally:
        handle.remove()
    for batch in captured:
        for key in ("past_key_values", "cache", "layer_past"):
            if key in batch.kwargs:
                batch.kwargs[key] = None
        if "use_cache" in batch.kwargs:
            batch.kwargs["use_cache"] = False
    return captured


def _call_model(model: nn.Module, input_ids: torch.Tensor) -> Any:
    try:
        return model(input_ids=input_ids, use_cache=False)
    except TypeError:
        return model(input_ids)


def call_block(block: nn.Module, batch: BlockBatch) -> torch.Tensor:
    """Run ``block`` on a captured batch and return its output hidden states (the first output of a tuple)."""
    if batch.hidden_in_kwargs:
        out = block(*batch.args, hidden_states=batch.hidden, **batch.kwargs)
    else:
        out = block(batch.hidden, *batch.args, **batch.kwargs)
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out


@contextmanager
def on_device(module: nn.Module, device: torch.device | None) -> Iterator[nn.Module]:
    """Move ``module`` to ``device`` for the ``with`` body and back to where it was afterwards (no-op for ``None``)."""
    if device is None:
        yield module
        return
    home = next(module.parameters()).device
    module.to(device)
    try:
        yield module
    finally:
        module.to(home)
