"""Helpers for structured-pruning tests: a fixture that runs each test on one torch thread, and
the oracle that silences channels before removing them."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from prunekit.torch import analyze_dependencies, remove_channels
from prunekit.torch.structured.graph import ChannelGroup, DependencyGraph
from tests.zoo import main_output, run


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Run the test on one torch thread (the CI machines have 2 shared cores), then restore the count.

    Autouse where imported: ``from tests.torch.structured_helpers import one_torch_thread``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def silence_channels(graph: DependencyGraph, group: ChannelGroup, channels: np.ndarray) -> None:
    """Make ``channels`` of ``group`` contribute nothing: zero every parameter and buffer slice
    holding them (BatchNorm running variances are set to 1)."""
    with torch.no_grad():
        for member in group.members:
            positions = np.nonzero(np.isin(member.index, channels))[0]
            if positions.size == 0:
                continue
            tensor = graph.tensor(member.tensor)
            value = 1.0 if member.tensor.endswith("running_var") else 0.0
            tensor.index_fill_(member.dim, torch.as_tensor(positions, device=tensor.device), value)


def oracle_selection(
    graph: DependencyGraph, fraction: float = 0.5, seed: int = 0, exact_only: bool = True
) -> dict[str, np.ndarray]:
    """A seeded random choice of ``fraction`` of the channels of every (exact) group of size >= 2."""
    rng = np.random.default_rng(seed)
    chosen = {}
    for group in graph.groups:
        if group.size < 2 or (exact_only and not group.exact):
            continue
        count = max(1, min(group.size - 1, int(round(fraction * group.size))))
        chosen[group.name] = np.sort(rng.choice(group.size, count, replace=False))
    return chosen


def run_oracle(model: nn.Module, inputs: Any, fraction: float = 0.5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """Silence a random half of every exact group's channels, then remove exactly those channels.

    Returns ``(silenced model output, pruned model output, result)``; the two outputs must be equal.
    """
    silenced = copy.deepcopy(model).eval()
    graph = analyze_dependencies(silenced, inputs)
    chosen = oracle_selection(graph, fraction, seed)
    for name, channels in chosen.items():
        silence_channels(graph, graph.group(name), channels)
    with torch.no_grad():
        expected = main_output(run(silenced, inputs))
    result = remove_channels(silenced, inputs, {k: v.tolist() for k, v in chosen.items()})
    with torch.no_grad():
        actual = main_output(run(result.model.eval(), inputs))
    return expected, actual, result
