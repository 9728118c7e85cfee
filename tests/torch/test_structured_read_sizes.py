"""Sizes the model reads from a tensor at run time (``b, t, c = x.shape``).

Code often sizes a reshape or a split with a width read from another tensor
(``y.reshape(b, t, c)``, ``split((c, c, 1))``, as PVT-v2 and FocalNet do), or checks an input
against a width it keeps (``if x.shape[-1] != self.num_channels: raise``). The first ties the two
tensors' channels together, so they must be pruned as one group; the second is an attribute that
must follow the pruned width.
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.torch import analyze_dependencies, load_pruned, prune_channels, save_pruned
from tests.torch.structured_helpers import one_torch_thread, run_oracle  # noqa: F401

IN, DIM, TOKENS = 6, 16, 5


class ReadWidthBlock(nn.Module):
    """A residual block whose inner width is made the residual's by a reshape and a split sized
    with ``x.shape``."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(DIM, DIM)
        self.gates = nn.Linear(DIM, 2 * DIM + 1)
        self.out = nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        y = self.inner(x).relu().reshape(b, t, c)
        q, ctx, gate = torch.split(self.gates(y), (c, c, 1), -1)
        return x + self.out(q * ctx * gate.sigmoid())


class CheckedInput(nn.Module):
    """A projection that checks its input's width against an attribute before using it."""

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.smoothing = num_channels  # a setting that happens to equal the width, compared with a literal
        self.proj = nn.Linear(num_channels, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.num_channels:
            raise ValueError(f"expected {self.num_channels} channels, got {x.shape[-1]}")
        if self.smoothing > 1:
            x = x * (1.0 - 1.0 / self.smoothing)
        return self.proj(x)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Linear(IN, 12), nn.ReLU())
        self.embed = CheckedInput(12)
        self.block = ReadWidthBlock()
        self.head = nn.Linear(DIM, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.embed(self.stem(x))).mean(1))


def _build() -> tuple[nn.Module, tuple[torch.Tensor]]:
    torch.manual_seed(0)
    return Net().eval(), (torch.randn(2, TOKENS, IN),)


def test_widths_read_from_a_tensor_tie_its_channels_to_the_reshape_and_the_split():
    model, inputs = _build()
    graph = analyze_dependencies(model, inputs)
    (residual,) = [g for g in graph.groups if any(m.tensor == "embed.proj.weight" and m.dim == 0 for m in g.members)]
    members = {(m.tensor, m.dim) for m in residual.members}
    assert {("block.inner.weight", 0), ("block.out.weight", 0)} <= members
    assert residual.size == DIM


def test_removing_silenced_channels_keeps_the_outputs():
    model, inputs = _build()
    expected, actual, _ = run_oracle(model, inputs)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def test_a_width_the_code_checks_follows_the_pruned_input_and_is_replayed(tmp_path):
    model, inputs = _build()
    result = prune_channels(model, inputs, 0.5)
    assert result.model.embed.num_channels == 6 and tuple(result.model.embed.proj.weight.shape) == (DIM // 2, 6)
    assert result.model.embed.smoothing == 12  # compared with a literal: a setting, not a size check
    assert tuple(result.model.block.gates.weight.shape) == (DIM + 1, DIM // 2)
    save_pruned(result, tmp_path / "net.safetensors")
    reloaded = load_pruned(tmp_path / "net.safetensors", lambda: _build()[0])
    assert reloaded.embed.num_channels == 6
    with torch.no_grad():
        assert torch.equal(reloaded(*inputs), result.model(*inputs))
