"""Rules met in mixture-of-experts blocks of the generated zoo: ``topk`` over the router's
logits (``k`` is not a dimension) and ``index_add`` gathering the experts' outputs back."""

from __future__ import annotations

import torch
from torch import nn

from prunekit.torch import analyze_dependencies, prune_channels
from tests.assertions import assert_same_outputs
from tests.torch.structured_helpers import one_torch_thread, run_oracle  # noqa: F401  (autouse)


class TinyMoE(nn.Module):
    """Token-choice top-2 routing over 3 experts, combined with ``index_add``."""

    def __init__(self, hidden: int = 8, inner: int = 12, experts: int = 3):
        super().__init__()
        self.embed = nn.Linear(4, hidden)
        self.router = nn.Linear(hidden, experts)
        self.up = nn.ModuleList(nn.Linear(hidden, inner) for _ in range(experts))
        self.down = nn.ModuleList(nn.Linear(inner, hidden) for _ in range(experts))
        self.head = nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        weights, chosen = self.router(h).softmax(-1).topk(2)
        out = torch.zeros_like(h)
        for e in range(len(self.up)):
            tokens, slot = torch.nonzero(chosen == e, as_tuple=True)
            y = self.down[e](torch.relu(self.up[e](h[tokens]))) * weights[tokens, slot, None]
            out = out.index_add(0, tokens, y)
        return self.head(torch.relu(out + h))


def _model_and_inputs() -> tuple[TinyMoE, torch.Tensor]:
    torch.manual_seed(0)
    return TinyMoE().eval(), torch.randn(16, 4)


def test_topk_and_index_add_have_rules_and_every_expert_is_a_group():
    model, x = _model_and_inputs()
    graph = analyze_dependencies(model, x)
    assert graph.unsupported == []
    sizes = {g.name: g.size for g in graph.groups}
    assert sizes == {"embed": 8, "up.0": 12, "up.1": 12, "up.2": 12}
    # the router's experts reach topk: they are kept, and index_add ties each expert's output to the hidden width
    assert "router" not in sizes
    assert set(graph.group("embed").producers) == {"embed", "down.0", "down.1", "down.2"}
    assert {"router", "up.0", "up.1", "up.2", "head"} <= set(graph.group("embed").consumers)


def test_removing_silenced_expert_channels_leaves_outputs_unchanged():
    model, x = _model_and_inputs()
    expected, actual, result = run_oracle(model, x, fraction=0.5, seed=0)
    assert set(result.removed) == {"embed", "up.0", "up.1", "up.2"}
    assert_same_outputs(actual, expected, atol=1e-5, rtol=1e-5)


def test_half_prune_halves_every_expert_and_the_hidden_width():
    model, x = _model_and_inputs()
    pruned = prune_channels(model, x, 0.5).model
    assert [m.out_features for m in pruned.up] == [6, 6, 6]
    assert pruned.embed.out_features == 4 and pruned.router.in_features == 4
    assert pruned(x).shape == (16, 2)


class _Rows(nn.Module):
    """``h[rows]`` picks tokens (the channels pass); ``g[:, cols]`` picks channels (they are kept)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 6), nn.Linear(4, 5), nn.Linear(9, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = torch.tensor([0, 2, 3])
        cols = torch.tensor([0, 1, 4])
        return self.head(torch.cat([self.a(x)[rows], self.b(x)[rows][:, cols]], dim=1))


def test_indexing_rows_keeps_channels_prunable_and_indexing_channels_keeps_them():
    torch.manual_seed(0)
    graph = analyze_dependencies(_Rows().eval(), torch.randn(5, 4))
    assert [(g.name, g.size) for g in graph.groups] == [("a", 6)]
    assert graph.unsupported == []
