"""Capture what a causal LM feeds each of its decoder blocks, and replay blocks on captured inputs.

The embeddings run once over the calibration tokens with every decoder block standing in as the
identity: each block records what the model calls it with (the hidden states, and every other
positional/keyword argument: attention mask, position ids, rotary ``position_embeddings``...), and
the last one raises a private exception that stops the forward there, so no block computes (but
the first, once, to learn the shape of a block's output) and no LM head runs. Blocks are called
with their own arguments, so a sliding-window block gets its windowed mask, a state-space block of
a hybrid stack its own mask, a local-attention block its local rotary embeddings.
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
from prunekit.torch.llm.discovery import DecoderStack, require_whole_blocks


class StopForward(Exception):
    """Raised by a hook to stop a model's forward once what it needs is recorded (no later block or head runs)."""


@dataclass
class BlockBatch:
    """One calibration batch at the door of a block: its hidden states and each block's other arguments.

    ``per_block[i]`` is ``(args, kwargs)`` that block ``i`` is called with besides the hidden
    states (tensors the model passes to several blocks are shared, not copied).
    """

    hidden: torch.Tensor
    per_block: list[tuple[tuple[Any, ...], dict[str, Any]]]
    hidden_in_kwargs: bool = False

    def to(self, device: torch.device | str) -> BlockBatch:
        """This batch with every tensor moved to ``device`` (a tensor shared by several blocks moves once)."""
        moved: dict[int, torch.Tensor] = {}

        def move(t: torch.Tensor) -> torch.Tensor:
            if id(t) not in moved:
                moved[id(t)] = t.to(device)
            return moved[id(t)]

        return BlockBatch(
            self.hidden.to(device),
            [tree_map_only(torch.Tensor, move, call) for call in self.per_block],
            self.hidden_in_kwargs,
        )


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter."""
    return next(model.parameters()).device


def capture_block_inputs(model: nn.Module, stack: DecoderStack, tokens: torch.Tensor, batch_size: int) -> list[BlockBatch]:
    """Run ``tokens`` (``[n, L]``) through the embeddings in batches and capture every block's inputs per batch.

    Example::

        batches = capture_block_inputs(model, find_decoder_stack(model), tokens, batch_size=4)
        batches[0].hidden.shape  # [4, L, hidden]
    """
    require_whole_blocks(model, stack, "capturing each block's inputs")
    captured: list[BlockBatch] = []
    calls: list[tuple[torch.Tensor, tuple[Any, ...], dict[str, Any], bool]] = []
    template: list[Any] = []  # one real output of block 0: the shape of what a block returns
    last = len(stack.blocks) - 1

    def stand_in(index: int, real: Any) -> Any:
        def forward(*args: Any, **kwargs: Any) -> Any:
            if args:
                hidden, rest, named, in_kwargs = args[0], tuple(args[1:]), dict(kwargs), False
            elif "hidden_states" in kwargs:
                hidden, rest, in_kwargs = kwargs["hidden_states"], (), True
                named = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            else:
                raise ConfigError(
                    f"could not find the hidden states among the inputs of block {stack.block_name(index)!r} of "
                    f"{type(model).__name__}: it is called with keywords {sorted(kwargs)} and no positional input"
                )
            if calls and not _same_tensor(hidden, calls[-1][0]):
                raise ConfigError(
                    f"the forward of {type(model).__name__} changes the hidden states between {stack.block_name(index - 1)!r} "
                    f"and {stack.block_name(index)!r}, so {stack.path!r} is not a stack of decoder blocks that "
                    "prunekit.llm can replay one by one (code of the model's forward runs between them); "
                    "prune it with prunekit.torch (unstructured or structured) instead"
                )
            calls.append((hidden.detach(), rest, named, in_kwargs))
            if index == last:
                raise StopForward
            if not template:
                template.append(real(*args, **kwargs))
            return _with_hidden(template[0], hidden)

        return forward

    device = model_device(model)
    own = [block.__dict__.get("forward") for block in stack.blocks]  # an instance-level forward (accelerate's hooks)
    for index, block in enumerate(stack.blocks):
        block.forward = stand_in(index, block.forward)
    try:
        with torch.no_grad():
            for start in range(0, tokens.shape[0], batch_size):
                batch = tokens[start : start + batch_size].to(device)
                calls.clear()
                try:
                    call_model(model, batch)
                except StopForward:
                    captured.append(_batch_from_calls(calls))
                    continue
                raise ConfigError(
                    f"the forward of {type(model).__name__} on token ids never reached its decoder block "
                    f"{stack.block_name(last)!r} (it ran {len(calls)} of {len(stack.blocks)} blocks); prunekit.llm needs "
                    "a model whose forward(input_ids=...) runs every decoder block"
                )
    finally:
        for block, previous in zip(stack.blocks, own, strict=True):
            del block.forward
            if previous is not None:
                block.forward = previous
    return captured


def _batch_from_calls(calls: list[tuple[torch.Tensor, tuple[Any, ...], dict[str, Any], bool]]) -> BlockBatch:
    per_block = []
    for _, args, kwargs, _ in calls:
        for key in ("past_key_values", "past_key_value", "cache", "layer_past", "cache_params"):
            if key in kwargs:
                kwargs[key] = None
        if "use_cache" in kwargs:
            kwargs["use_cache"] = False
        per_block.append((args, kwargs))
    return BlockBatch(calls[0][0], per_block, calls[0][3])


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` holds the very values of ``b`` (the same storage, shape and strides)."""
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()


def _with_hidden(output: Any, hidden: torch.Tensor) -> Any:
    """``output`` (a block's return value) with its hidden states replaced by ``hidden``."""
    if isinstance(output, torch.Tensor):
        return hidden
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    if isinstance(output, list):
        return [hidden, *output[1:]]
    return hidden


def call_model(model: nn.Module, input_ids: torch.Tensor) -> Any:
    """``model(input_ids=..., use_cache=False)``, or ``model(input_ids)`` for a forward without those keywords."""
    try:
        return model(input_ids=input_ids, use_cache=False)
    except TypeError:
        return model(input_ids)


def call_block(block: nn.Module, batch: BlockBatch, index: int) -> torch.Tensor:
    """Run ``block`` (block ``index`` of the stack) on a captured batch with that block's own arguments and
    return its output hidden states (the first output of a tuple)."""
    args, kwargs = batch.per_block[index]
    if batch.hidden_in_kwargs:
        out = block(*args, hidden_states=batch.hidden, **kwargs)
    else:
        out = block(batch.hidden, *args, **kwargs)
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
