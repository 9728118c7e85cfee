"""Run one decoder block over the calibration data, as it sees it with the blocks before it already pruned.

Two ways, one verb: :class:`CapturedReplay` calls a self-contained block on inputs captured at its
door and carries its outputs to the next block (the SparseGPT recipe, the model plus one block's
activations in memory). :class:`ForwardReplay` serves a stack split over parallel lists (XLM's
``attentions[i]``, ``ffns[i]``), whose residuals and norms live in the model's forward: it runs that
forward over each calibration batch and stops it right after the block, so every block sees its
inputs through the earlier blocks as pruned so far. It holds no activations but recomputes the
prefix for each block (about ``blocks / 2`` forwards in all).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.torch.llm.capture import BlockBatch, StopForward, call_block, call_model, capture_block_inputs, model_device
from prunekit.torch.llm.discovery import DecoderStack


class BlockReplay(Protocol):
    """Runs block ``index`` over every calibration batch, calling ``before_batch`` before each one."""

    def __len__(self) -> int:
        """The number of calibration batches."""
        ...

    def run(
        self, block: nn.Module, index: int, device: torch.device | None, before_batch: Callable[[], None] | None, replace: bool
    ) -> None:
        """Run ``block`` (block ``index``, on ``device`` when given) over each batch; with ``replace`` its outputs
        become the next block's inputs."""
        ...


class CapturedReplay:
    """Blocks replayed alone on their captured inputs (the batches live on ``device`` when one is given)."""

    def __init__(self, batches: list[BlockBatch]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def run(
        self, block: nn.Module, index: int, device: torch.device | None, before_batch: Callable[[], None] | None, replace: bool
    ) -> None:
        """Call ``block`` on each captured batch (moved to ``device`` for the call when given)."""
        for batch in self.batches:
            if before_batch is not None:
                before_batch()
            work = batch.to(device) if device is not None else batch
            try:
                out = call_block(block, work, index)
            except StopForward:  # a statistics pass that has seen every projection call it needs
                continue
            if replace:
                batch.hidden = out.to(batch.hidden.device) if device is not None else out


class ForwardReplay:
    """Blocks reached through the model's own forward, stopped after block ``index``'s last call.

    A probe forward of one sequence counts each block's calls (a block called twice is stopped after
    its second call); a block the forward never calls is never run, so its projections get no
    statistics (``prune`` reports them as unreached and prunes them by magnitude).
    """

    def __init__(self, model: nn.Module, stack: DecoderStack, tokens: torch.Tensor, batch_size: int) -> None:
        self.model, self.stack = model, stack
        self.batches = [tokens[start : start + batch_size] for start in range(0, tokens.shape[0], batch_size)]
        self.calls = self._count_calls(tokens[:1])

    def __len__(self) -> int:
        return len(self.batches)

    def _count_calls(self, sample: torch.Tensor) -> list[int]:
        counts = [0] * len(self.stack.blocks)

        def counter(index: int) -> Callable[..., None]:
            def hook(_module: nn.Module, _args: Any) -> None:
                counts[index] += 1

            return hook

        handles = [block.register_forward_pre_hook(counter(i)) for i, block in enumerate(self.stack.blocks)]
        try:
            with torch.no_grad():
                call_model(self.model, sample.to(model_device(self.model)))
        finally:
            for handle in handles:
                handle.remove()
        return counts

    def run(
        self, block: nn.Module, index: int, device: torch.device | None, before_batch: Callable[[], None] | None, replace: bool
    ) -> None:
        """Run the model's forward on each batch up to block ``index``; a run with nothing to observe
        (``before_batch`` ``None``) is skipped: the next block's run recomputes this one as it is now."""
        del replace  # every run recomputes the earlier blocks: there is nothing to carry
        if device is not None:
            raise ConfigError(
                f"the units of {', '.join(self.stack.lists)} run inside the model's own forward, where the model is: "
                "move the model to the device instead of passing device="
            )
        if before_batch is None or not self.calls[index]:
            return
        seen = [0]

        def stop(_module: nn.Module, _args: Any, _out: Any) -> None:
            seen[0] += 1
            if seen[0] == self.calls[index]:
                raise StopForward

        handle = block.register_forward_hook(stop)
        try:
            for batch in self.batches:
                seen[0] = 0
                before_batch()
                try:
                    call_model(self.model, batch.to(model_device(self.model)))
                except StopForward:
                    continue
        finally:
            handle.remove()


def block_replay(
    model: nn.Module, stack: DecoderStack, tokens: torch.Tensor | None, batch_size: int | None, device: torch.device | None = None
) -> BlockReplay:
    """The replay for ``stack``: captured inputs (held on ``device`` when given) or, for parallel lists, the
    model's own forward. No tokens give a replay of no batches.

    Example::

        replay = block_replay(model, find_decoder_stack(model), tokens, batch_size=4)
        replay.run(stack.blocks[0], 0, None, collector.new_batch, replace=True)
    """
    if tokens is None or not batch_size:
        return CapturedReplay([])
    if stack.parallel:
        return ForwardReplay(model, stack, tokens, batch_size)
    batches = capture_block_inputs(model, stack, tokens, batch_size)
    return CapturedReplay([b.to(device) for b in batches] if device is not None else batches)
