"""Attention patterns behind the generated zoo's failures, each on a small hand-written module:
the pruned model runs, its MACs fall, the heads' attributes follow, and the oracle holds."""

from __future__ import annotations

import pytest
import torch

from prunekit.torch import analyze_dependencies, prune_channels
from prunekit.torch.structured.prune import HeadsNotFollowedWarning
from tests.torch.structured_helpers import one_torch_thread, run_oracle  # noqa: F401
from tests.torch.zoo_patterns import (
    CreatedBiasAttention,
    EinsumHeadsAttention,
    EinsumScoresAttention,
    HelperCreatedAttention,
    LiteralGate,
    MultiQueryAttention,
    PartialWrites,
    SingleHeadAttention,
    TrilOverChannels,
    TwoBranchHeads,
    UnequalHeadSplitAttention,
    build_pattern,
)


@pytest.mark.parametrize("mode", ["matmul", "repeat", "gqa"])
def test_multi_query_attention_prunes_query_heads_and_keeps_the_shared_key_value_head(mode):
    model, inputs = build_pattern(MultiQueryAttention(mode))
    heads = [g for g in analyze_dependencies(model, inputs).groups if g.kind == "heads"]
    assert [(g.name, g.size) for g in heads] == [("attention.c_attn", 4)]
    result = prune_channels(model, inputs, 0.5)
    attention = result.model.attention
    assert tuple(attention.c_attn.weight.shape) == (16 + 2 * 8, 32)  # two query heads left, k and v whole
    assert (attention.num_heads, attention.embed_dim, attention.kv_dim) == (2, 16, 8)
    assert attention.groups == (2 if mode == "repeat" else 4)  # the repeat count follows the heads
    assert result.report.macs_ratio >= 1.6
    with torch.no_grad():
        assert result.model(*inputs).shape == model(*inputs).shape


@pytest.mark.parametrize("mode", ["matmul", "repeat", "gqa"])
def test_multi_query_attention_oracle(mode):
    model, inputs = build_pattern(MultiQueryAttention(mode))
    expected, actual, result = run_oracle(model, inputs)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    assert result.model.attention.num_heads == 2


def test_unequal_per_head_split_prunes_whole_heads():
    model, inputs = build_pattern(UnequalHeadSplitAttention(heads=4))
    result = prune_channels(model, inputs, 0.5)
    attention = result.model.attention
    assert (attention.num_attention_heads, attention.key_dim, attention.out_dim) == (2, 8, 32)
    assert tuple(attention.qkv.weight.shape) == (2 * 32, 32)
    assert result.report.macs_ratio >= 1.6
    with torch.no_grad():
        assert result.model(*inputs).shape == model(*inputs).shape


def test_unequal_split_of_a_single_head_keeps_the_head_width_whole_and_the_oracle_holds():
    model, inputs = build_pattern(UnequalHeadSplitAttention(heads=1))
    expected, actual, result = run_oracle(model, inputs)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    attention = result.model.attention
    assert tuple(attention.qkv.weight.shape)[0] == 32 and attention.key_dim == 8
    reasons = " ".join(entry.reason for entry in analyze_dependencies(model, inputs).left_alone)
    assert "width of a single attention head" in reasons


def test_heads_meeting_a_created_position_bias_are_pruned_and_its_size_attribute_follows():
    model, inputs = build_pattern(CreatedBiasAttention())
    result = prune_channels(model, inputs, 0.5)
    attention = result.model.attention
    assert (attention.n_heads, attention.inner_dim) == (2, 16)
    assert tuple(attention.q.weight.shape) == (16, 32)
    assert result.report.macs_ratio >= 1.6
    expected, actual, _ = run_oracle(model, inputs)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


class _CatByAxis(torch.nn.Module):
    """``torch.cat(..., axis=1)`` (numpy's keyword, as funnel writes it) of two convolutions' channels."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Conv2d(3, 6, 1), torch.nn.Conv2d(3, 4, 1)
        self.out = torch.nn.Conv2d(10, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.cat([self.a(x), self.b(x)], axis=1))


def test_concatenation_along_an_axis_keyword_keeps_each_branch_prunable():
    model, x = _CatByAxis().eval(), torch.randn(2, 3, 5, 5)
    sizes = sorted(g.size for g in analyze_dependencies(model, x).groups)
    assert sizes == [4, 6]
    expected, actual, result = run_oracle(model, x)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    assert result.model.out.in_channels == 5


def test_a_buffer_created_in_a_childs_helper_gets_the_childs_size_attribute_not_a_same_valued_one():
    model, inputs = build_pattern(HelperCreatedAttention())
    expected, actual, result = run_oracle(model, inputs)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    attention = result.model.attention
    assert attention.experts.hidden_size == attention.experts.linear.out_features == 16
    assert attention.kv_projection_size == 32  # same value, never a size: left as it was
    assert result.report.macs_ratio > 1.3


def test_a_single_heads_width_is_kept_whole_so_q_k_and_v_views_stay_consistent():
    model, inputs = build_pattern(SingleHeadAttention())
    expected, actual, result = run_oracle(model, inputs)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    attention = result.model.attention
    assert attention.attention_head_size == 32 and attention.query.out_features == 32
    reasons = " ".join(entry.reason for entry in analyze_dependencies(model, inputs).left_alone)
    assert "width of a single attention head" in reasons


def test_strided_chunks_picked_rows_and_partial_writes_keep_their_channels_prunable():
    model, inputs = build_pattern(PartialWrites())
    graph = analyze_dependencies(model, inputs)
    proj = [g for g in graph.groups if g.producers == ["attention.proj"]]
    assert len(proj) == 1 and proj[0].size == 32 and proj[0].exact
    expected, actual, result = run_oracle(model, inputs)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    assert result.model.attention.proj.out_features == 16 and result.model.attention.out.in_features == 16


def test_heads_merged_into_the_batch_of_an_einsum_are_pruned_whole():
    model, inputs = build_pattern(EinsumHeadsAttention())
    heads = [g for g in analyze_dependencies(model, inputs).groups if g.kind == "heads"]
    assert [(g.name, g.size) for g in heads] == [("attention.q", 4)]
    expected, actual, result = run_oracle(model, inputs)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    pruned = prune_channels(model, inputs, 0.5)
    attention = pruned.model.attention
    assert (attention.num_heads, attention.head_dim) == (2, 8)  # two whole heads left, each as wide as before
    assert attention.q.out_features == attention.k.out_features == attention.v.out_features == 16
    with torch.no_grad():
        assert pruned.model(*inputs).shape == model(*inputs).shape


def test_a_dimension_the_code_sizes_with_a_literal_is_kept():
    model, inputs = build_pattern(LiteralGate())
    expected, actual, result = run_oracle(model, inputs)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    assert result.model.attention.gate.out_features == 8 and result.model.attention.num_heads == 4
    reasons = " ".join(entry.reason for entry in analyze_dependencies(model, inputs).left_alone)
    assert "a size the code writes as a literal (4)" in reasons


def test_a_dimension_computed_from_kept_attributes_is_kept():
    model, inputs = build_pattern(TwoBranchHeads())
    expected, actual, result = run_oracle(model, inputs)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    assert (result.model.attention.num_heads, result.model.attention.q.out_features) == (2, 16)
    reasons = " ".join(entry.reason for entry in analyze_dependencies(model, inputs).left_alone)
    assert "a size computed from head_dim, num_heads, which are kept" in reasons


def test_heads_followed_through_einsum_scores_and_values_are_pruned_whole(recwarn):
    model, inputs = build_pattern(EinsumScoresAttention())
    graph = analyze_dependencies(model, inputs)
    assert graph.unsupported == [] and graph.head_problems == []  # the data-sized narrow and the tril band have rules
    assert [(g.name, g.size) for g in graph.groups if g.kind == "heads"] == [("attention.q", 4)]
    expected, actual, _ = run_oracle(model, inputs)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    pruned = prune_channels(model, inputs, 0.5)
    attention = pruned.model.attention
    assert (attention.num_heads, attention.head_dim) == (2, 8)  # two whole heads left
    assert attention.q.out_features == attention.k.out_features == attention.v.out_features == 16
    assert not [w for w in recwarn if issubclass(w.category, HeadsNotFollowedWarning)]
    with torch.no_grad():
        assert pruned.model(*inputs).shape == model(*inputs).shape


def test_a_narrow_sized_from_data_keeps_only_the_narrowed_dimension():
    model, inputs = build_pattern(EinsumScoresAttention())
    graph = analyze_dependencies(model, inputs)
    o_group = [g for g in graph.groups if g.producers == ["attention.o"]]
    assert len(o_group) == 1 and o_group[0].size == 32  # the tokens were narrowed, o's channels stay prunable


def test_a_tril_over_channels_keeps_them_with_a_reason():
    model, inputs = build_pattern(TrilOverChannels())
    graph = analyze_dependencies(model, inputs)
    assert graph.unsupported == []
    kept = [entry for entry in graph.left_alone if entry.tensor == "attention.proj.weight"]
    assert len(kept) == 1 and kept[0].channels == 32 and "tril" in kept[0].reason
    expected, actual, _ = run_oracle(model, inputs)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
