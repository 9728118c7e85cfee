"""Heads followed back through concatenations along other dimensions.

Attention code often concatenates q/k/v with something before the product: a key/value cache
(``cat((past, k), -2)``, or the legacy empty ``torch.tensor([])`` cache), or the rotated and
pass-through halves of a partial rotary embedding (``cat((q_rot, q_pass), -1)``). The heads
dimension runs through such a ``cat`` unchanged, so the reshape that made it must still be found;
otherwise each projection's ``head_dim`` is pruned on its own while one attribute sizes them all.
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.torch import analyze_dependencies, prune_channels
from tests.torch.attention_blocks import DIM, HEADS, TOKENS, Classifier, _attend
from tests.torch.structured_helpers import one_torch_thread, run_oracle  # noqa: F401


class CachedPartialRotaryAttention(nn.Module):
    """Heads split by a shape built in a separate statement, an empty legacy cache concatenated in
    front of k and v, and a partial "rotary" that concatenates a transformed quarter of q and k
    with the rest; ``num_heads`` and ``head_dim`` size every reshape."""

    def __init__(self) -> None:
        super().__init__()
        self.num_heads, self.head_dim = HEADS, DIM // HEADS
        self.q, self.k, self.v, self.o = (nn.Linear(DIM, DIM) for _ in range(4))

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.size()[:-1] + (self.num_heads, self.head_dim)
        return x.view(shape).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        past = torch.tensor([], dtype=x.dtype)
        k, v = torch.cat((past, k), dim=-2), torch.cat((past, v), dim=-2)
        r = self.head_dim // 4
        q = torch.cat((q[..., :r].flip(-1), q[..., r:]), dim=-1)
        k = torch.cat((k[..., :r].flip(-1), k[..., r:]), dim=-1)
        out = _attend(q, k, v).permute(0, 2, 1, 3).contiguous()
        return self.o(out.view(b, t, self.num_heads * self.head_dim))


def _build() -> tuple[nn.Module, tuple[torch.Tensor]]:
    torch.manual_seed(0)
    return Classifier(CachedPartialRotaryAttention()).eval(), (torch.randn(2, TOKENS, DIM),)


def test_heads_run_through_concatenations_and_are_one_group():
    model, inputs = _build()
    graph = analyze_dependencies(model, inputs)
    heads = [g for g in graph.groups if g.kind == "heads"]
    assert [(g.size, g.exact) for g in heads] == [(HEADS, True)]
    assert graph.head_problems == []


def test_removing_silenced_heads_through_concatenations_keeps_the_outputs():
    model, inputs = _build()
    expected, actual, _ = run_oracle(model, inputs)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def test_half_the_heads_go_and_head_dim_stays_whole():
    model, inputs = _build()
    result = prune_channels(model, inputs, 0.5)
    attention = result.model.attention
    assert (attention.num_heads, attention.head_dim) == (HEADS // 2, DIM // HEADS)
    assert tuple(attention.v.weight.shape) == (DIM // 2, DIM)
    removed = result.removed["attention.q"]
    rows = [h * (DIM // HEADS) + d for h in range(HEADS) if h not in removed for d in range(DIM // HEADS)]
    assert torch.equal(attention.v.weight, model.attention.v.weight[rows])
    with torch.no_grad():
        assert result.model(*inputs).shape == (2, 3)
