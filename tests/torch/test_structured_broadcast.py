"""A size-1 dimension broadcast against a longer one keeps its channel.

Linear (separable) self-attention projects one query channel next to the keys and values, scores
the tokens with it, and broadcasts those scores over every key channel. Removing the query's one
channel would leave a size-0 tensor that no longer broadcasts, so it is never chosen, while the
key/value channels beside it in the same projection still go.
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.torch import analyze_dependencies, prune_channels
from tests.torch.attention_blocks import DIM, TOKENS
from tests.torch.structured_helpers import one_torch_thread, run_oracle  # noqa: F401


class LinearSelfAttention(nn.Module):
    """qkv split into (1, embed, embed); the query's token scores are broadcast over the keys."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = DIM
        self.qkv = nn.Linear(DIM, 1 + 2 * DIM)
        self.out = nn.Linear(DIM, DIM)
        self.head = nn.Linear(DIM, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        query, key, value = self.qkv(x).split([1, self.embed, self.embed], dim=-1)
        context = (key * query.softmax(dim=1)).sum(dim=1, keepdim=True)
        return self.head(self.out(value.relu() * context).mean(1))


def _build() -> tuple[nn.Module, tuple[torch.Tensor]]:
    torch.manual_seed(0)
    return LinearSelfAttention().eval(), (torch.randn(2, TOKENS, DIM),)


def test_the_broadcast_channel_is_kept_and_the_others_stay_prunable():
    model, inputs = _build()
    graph = analyze_dependencies(model, inputs)
    (group,) = [g for g in graph.groups if any(m.tensor == "qkv.weight" for m in g.members)]
    assert group.size == DIM


def test_removing_silenced_channels_next_to_a_broadcast_channel_keeps_the_outputs():
    model, inputs = _build()
    expected, actual, _ = run_oracle(model, inputs)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def test_half_the_key_value_channels_go_and_the_query_row_stays():
    model, inputs = _build()
    result = prune_channels(model, inputs, 0.5)
    assert result.model.embed == DIM // 2
    assert tuple(result.model.qkv.weight.shape) == (1 + DIM, DIM)
    assert torch.equal(result.model.qkv.weight[0], model.qkv.weight[0])
