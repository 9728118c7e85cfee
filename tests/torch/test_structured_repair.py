"""Size attributes found wherever the module's code reads them.

Attention code often reshapes in a helper method rather than in ``forward`` (``self._shape(x)``),
copies sizes into local variables first (``n_head, d_head = self.config.n_head,
self.config.d_head``), and splits a fused projection by a list of section sizes held on the
module (``split([self.q_size, self.kv_size, self.kv_size])``). Each size must still be traced back
to the attribute it came from and updated when the heads shrink. A config shared by several
blocks is copied before one block's field changes, so other readers keep their own sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from prunekit.torch import analyze_dependencies, prune_channels, remove_channels
from tests.torch.attention_blocks import DIM, HEADS, TOKENS, Classifier, _attend
from tests.torch.structured_helpers import one_torch_thread, run_oracle  # noqa: F401


@dataclass
class _Config:
    n_head: int = HEADS
    d_head: int = DIM // HEADS
    width: int = DIM


class HelperShapeAttention(nn.Module):
    """Heads split in a helper method; ``forward`` itself never names the head count."""

    def __init__(self) -> None:
        super().__init__()
        self.n_h, self.d_h, self.inner = HEADS, DIM // HEADS, DIM
        self.q, self.k, self.v, self.o = (nn.Linear(DIM, DIM) for _ in range(4))

    def _shape(self, x: torch.Tensor, b: int, t: int) -> torch.Tensor:
        return x.view(b, t, self.n_h, self.d_h).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        out = _attend(self._shape(self.q(x), b, t), self._shape(self.k(x), b, t), self._shape(self.v(x), b, t))
        return self.o(out.transpose(1, 2).reshape(b, t, self.inner))


class LocalSizeAttention(nn.Module):
    """Sizes copied from a config into local variables before every reshape."""

    def __init__(self, config: _Config | None = None) -> None:
        super().__init__()
        self.config = config or _Config()
        self.q, self.k, self.v, self.o = (nn.Linear(DIM, DIM) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        n_head, d_head = self.config.n_head, self.config.d_head
        q, k, v = (p(x).view(b, t, n_head, d_head).transpose(1, 2) for p in (self.q, self.k, self.v))
        width = n_head * d_head
        return self.o(_attend(q, k, v).transpose(1, 2).reshape(b, t, width))


class SplitSectionsAttention(nn.Module):
    """A fused projection split by section sizes kept on the module."""

    def __init__(self) -> None:
        super().__init__()
        self.heads, self.q_size, self.kv_size = HEADS, DIM, DIM
        self.qkv = nn.Linear(DIM, 3 * DIM)
        self.o = nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q, k, v = (p.reshape(b, t, self.heads, -1).transpose(1, 2) for p in (q, k, v))
        return self.o(_attend(q, k, v).transpose(1, 2).reshape(b, t, self.q_size))


class HeadDimScale(nn.Module):
    """Recomputes the head width from the shared config at every call (as dynamic rotary tables do)."""

    def __init__(self, config: _Config) -> None:
        super().__init__()
        self.config = config

    def forward(self) -> torch.Tensor:
        return torch.linspace(0.5, 1.5, self.config.width // self.config.n_head)


class SharedConfigStack(nn.Module):
    """Two attention blocks and a head-width reader sharing one config object."""

    def __init__(self) -> None:
        super().__init__()
        config = _Config()
        self.first, self.second, self.scale = LocalSizeAttention(config), LocalSizeAttention(config), HeadDimScale(config)
        self.head = nn.Linear(DIM, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.first(x)
        x = x + self.second(x)
        scale = self.scale().repeat(DIM // (DIM // HEADS))
        return self.head((x * scale).mean(1))


BLOCKS = {"helper": HelperShapeAttention, "locals": LocalSizeAttention, "split": SplitSectionsAttention}


def _build(name: str) -> tuple[nn.Module, tuple[torch.Tensor]]:
    torch.manual_seed(0)
    return Classifier(BLOCKS[name]()).eval(), (torch.randn(2, TOKENS, DIM),)


@pytest.mark.parametrize("name", list(BLOCKS))
def test_removing_silenced_heads_keeps_the_outputs(name):
    model, inputs = _build(name)
    expected, actual, _ = run_oracle(model, inputs)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def test_sizes_read_in_a_helper_method_are_updated():
    model, inputs = _build("helper")
    result = prune_channels(model, inputs, 0.5)
    attention = result.model.attention
    assert (attention.n_h, attention.d_h, attention.inner) == (HEADS // 2, DIM // HEADS, DIM // 2)
    with torch.no_grad():
        assert result.model(*inputs).shape == (2, 3)


def test_sizes_copied_into_local_variables_update_their_config_fields():
    model, inputs = _build("locals")
    result = prune_channels(model, inputs, 0.5)
    attention = result.model.attention
    assert (attention.config.n_head, attention.config.d_head) == (HEADS // 2, DIM // HEADS)
    assert tuple(attention.q.weight.shape) == (DIM // 2, DIM)


def test_split_section_sizes_kept_on_the_module_shrink_with_the_heads():
    model, inputs = _build("split")
    result = prune_channels(model, inputs, 0.5)
    attention = result.model.attention
    assert (attention.heads, attention.q_size, attention.kv_size) == (HEADS // 2, DIM // 2, DIM // 2)
    assert tuple(attention.qkv.weight.shape) == (3 * DIM // 2, DIM)
    with torch.no_grad():
        assert result.model(*inputs).shape == (2, 3)


def test_a_shared_config_is_copied_so_blocks_keep_their_own_head_counts():
    torch.manual_seed(0)
    model, inputs = SharedConfigStack().eval(), (torch.randn(2, TOKENS, DIM),)
    graph = analyze_dependencies(model, inputs)
    first, second = (
        next(g.name for g in graph.groups if g.kind == "heads" and f"{b}.q.weight" in {m.tensor for m in g.members})
        for b in ("first", "second")
    )
    result = remove_channels(model, inputs, {first: [0], second: [1, 2]})
    pruned = result.model
    assert (pruned.first.config.n_head, pruned.second.config.n_head, pruned.scale.config.n_head) == (3, 2, HEADS)
    assert model.first.config.n_head == HEADS and model.first.config is model.scale.config
    with torch.no_grad():
        assert pruned(*inputs).shape == (2, 3)
