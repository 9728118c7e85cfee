"""A deterministic clock for latency tests: time advances only by the multiply-adds the model runs.

Real timings on the shared 2-core machines swing with the other jobs' load, so tests of what a latency
measurement computes (pairing, medians, budgets) read this clock instead; the real timings are the
benchmarks' job (``benchmarks/latency_budget.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


class MacClock:
    """Seconds = multiply-adds of the ``nn.Linear`` layers run so far x ``seconds_per_mac``, plus ``spikes``:
    extra seconds the clock adds at given reads (load that comes and goes)."""

    def __init__(self, seconds_per_mac: float = 1e-9, spikes: dict[int, float] | None = None):
        self.seconds_per_mac, self.spikes = seconds_per_mac, dict(spikes or {})
        self.macs, self.reads, self.extra = 0, 0, 0.0

    def __call__(self) -> float:
        self.extra += self.spikes.get(self.reads, 0.0)
        self.reads += 1
        return self.macs * self.seconds_per_mac + self.extra

    def _count(self, module: nn.Module, inputs: tuple[Any, ...], _output: Any) -> None:
        if isinstance(module, nn.Linear):
            self.macs += inputs[0].numel() // module.in_features * module.in_features * module.out_features

    @contextmanager
    def running(self) -> Iterator[MacClock]:
        """Count every ``nn.Linear`` call (of any model, the pruned copies included) while inside."""
        handle = torch.nn.modules.module.register_module_forward_hook(self._count)
        try:
            yield self
        finally:
            handle.remove()
