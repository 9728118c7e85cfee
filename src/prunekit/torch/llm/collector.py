"""The statistics pass over a decoder block: its projections' inputs summed per projection, and the block
stopped as soon as nothing more is to be learned from it.

A statistics pass needs only the *inputs* of the block's projections. Once the last projection call of
the block (in execution order) has been seen, the rest of its forward (that projection's own matmul,
an MLP's down projection, the residual adds) is wasted work, so the pass stops there: the first batch
runs the block in full and records the sequence of projection calls (a projection may be called more
than once); every later batch follows that sequence call by call and raises a private exception from
the pre-hook of its last call (a :class:`StopForward`, which the block replays catch). The statistics are the sums of the
very same inputs, so the pruning is identical. The exit is turned off for good when the first batch
did not reach every projection or a later batch strays from the sequence (routing that depends on the
data, as in a mixture of experts built from separate modules); the batch that strays runs in full.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from prunekit.torch.llm.capture import StopForward
from prunekit.torch.llm.discovery import weight_matrix
from prunekit.torch.llm.experts import ExpertUses
from prunekit.torch.llm.replay import BlockReplay
from prunekit.torch.llm.statistics import InputStatistics


class _StopBlock(StopForward):
    """Raised from the pre-hook of a block's last projection call once its inputs are summed."""


class CallOrder:
    """The sequence of projection calls of one block's forward, learned on its first full run.

    ``called(name)`` is True when a call completes the learned sequence (the rest of the block may be
    skipped). Example::

        order = CallOrder({"q", "o"})
        order.called("q"), order.called("o")  # (False, False): learning
        order.new_run()
        order.called("q"), order.called("o")  # (False, True)
    """

    def __init__(self, names: set[str]) -> None:
        self.names = names
        self.sequence: list[str] | None = None
        self.enabled = True
        self._seen: list[str] = []

    def new_run(self) -> None:
        """Start a run of the block: after the first, its calls become the sequence later runs follow."""
        if self.sequence is None and self._seen:
            self.sequence = self._seen
            self.enabled = set(self.sequence) == self.names  # a projection not reached may be reached later
        self._seen = []

    def called(self, name: str) -> bool:
        """Note a call of projection ``name``; True when it is the last of the learned sequence."""
        if self.sequence is None:
            self._seen.append(name)
            return False
        if not self.enabled:
            return False
        position = len(self._seen)
        if position >= len(self.sequence) or self.sequence[position] != name:
            self.enabled = False  # the calls depend on the data: full runs from here on
            return False
        self._seen.append(name)
        return position + 1 == len(self.sequence)


class StatsCollector:
    """Forward pre-hooks on a block's projections that add their inputs to :class:`InputStatistics`.

    Projections fed the very same tensor (q/k/v, gate/up) share one statistics object, found on
    the first batch: an input is shared when the tensor an earlier projection saw at the same address
    is still alive (a weak reference: holding the inputs would keep each one past its last use, 9 MiB
    at the peak of a GPT-2-small block at 1024 tokens, and a freed address may hold another tensor).
    With ``stop_early`` the block's forward is stopped
    after its last projection call (see the module docstring); a pass that needs the block's
    outputs too must leave it off.
    """

    def __init__(self, modules: Mapping[str, nn.Module], hessian: bool, stop_early: bool = True) -> None:
        self.stats: dict[str, InputStatistics] = {}
        self.owner: dict[str, str] = {}
        self.order = CallOrder(set(modules)) if stop_early else None
        self._seen: dict[tuple, tuple[weakref.ref[torch.Tensor], str]] = {}
        self._batches = 0
        self._handles = [
            module.register_forward_pre_hook(self._hook(name, weight_matrix(module).shape[1], hessian))
            for name, module in modules.items()
        ]

    def new_batch(self) -> None:
        self._seen = {}
        self._batches += 1
        if self.order is not None:
            self.order.new_run()

    def _hook(self, name: str, features: int, hessian: bool):  # noqa: ANN202
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            self._add(name, features, hessian, args[0])
            if self.order is not None and self.order.called(name):
                raise _StopBlock

        return hook

    def _add(self, name: str, features: int, hessian: bool, x: torch.Tensor) -> None:
        if name in self.owner:
            return
        if self._batches <= 1:
            key = (x.data_ptr(), tuple(x.shape), tuple(x.stride()), x.dtype)
            earlier = self._seen.get(key)
            if earlier is not None and earlier[0]() is not None:
                self.owner[name] = earlier[1]
                self.stats[name] = self.stats[earlier[1]]
                return
            self._seen[key] = (weakref.ref(x), name)
        if name not in self.stats:
            self.stats[name] = InputStatistics(features=features, hessian=hessian)
        self.stats[name].add(x)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._seen = {}


def run_block(
    block: nn.Module,
    index: int,
    replay: BlockReplay,
    device: torch.device | None,
    collector: StatsCollector | None,
    replace: bool,
    uses: ExpertUses | None = None,
) -> None:
    """Run block ``index`` of the stack over every batch (collecting statistics, per expert too under ``uses``;
    replacing the hidden states). A collector that stops early is for passes that do not replace them."""
    if replace and collector is not None and collector.order is not None:
        raise ValueError("a statistics pass that replaces the hidden states must run the block in full (stop_early=False)")

    def before_batch() -> None:
        if collector is not None:
            collector.new_batch()
        if uses is not None:
            uses.new_batch()

    observing = collector is not None or uses is not None
    with torch.no_grad(), uses if uses is not None else contextlib.nullcontext():
        replay.run(block, index, device, before_batch if observing else None, replace)
