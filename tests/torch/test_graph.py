"""Dependency analysis: which channels are coupled, found from a trace of the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.errors import ConfigError, LayerNotFoundError
from prunekit.torch import DigitsCNN, analyze_dependencies
from tests.torch.structured_helpers import one_torch_thread  # noqa: F401  (autouse: one torch thread per test)


def sizes(graph) -> dict[str, int]:
    return {g.name: g.size for g in graph.groups}


def member(group, tensor: str, dim: int):
    return next(m for m in group.members if m.tensor == tensor and m.dim == dim)


class ConvBNConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        return self.conv2(torch.relu(self.bn1(self.conv1(x))))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.branch = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.branch(x)
        return self.head(x.mean((2, 3)))


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 6, 1)
        self.c = nn.Conv2d(10, 2, 1)

    def forward(self, x):
        return self.c(torch.cat([self.a(x), self.b(x)], dim=1))


def test_conv_bn_conv_forms_one_group_with_bn_as_follower():
    graph = analyze_dependencies(ConvBNConv(), torch.randn(2, 3, 8, 8))
    assert sizes(graph) == {"conv1": 8}
    group = graph.groups[0]
    roles = {(m.tensor, m.dim): m.role for m in group.members}
    assert roles == {
        ("conv1.weight", 0): "producer",
        ("conv1.bias", 0): "follower",
        ("bn1.weight", 0): "follower",
        ("bn1.bias", 0): "follower",
        ("bn1.running_mean", 0): "follower",
        ("bn1.running_var", 0): "follower",
        ("conv2.weight", 1): "consumer",
    }
    assert group.exact


def test_model_outputs_are_protected_by_default():
    graph = analyze_dependencies(DigitsCNN(), torch.zeros(2, 1, 8, 8))
    assert sizes(graph) == {"conv1": 32, "conv2": 64, "fc1": 128}


def test_protect_outputs_false_makes_the_classifier_prunable():
    graph = analyze_dependencies(DigitsCNN(), torch.zeros(2, 1, 8, 8), protect_outputs=False)
    assert sizes(graph)["fc2"] == 10


def test_residual_add_merges_both_branches_into_one_group():
    graph = analyze_dependencies(Residual(), torch.randn(2, 3, 8, 8))
    assert sizes(graph) == {"stem": 8}
    group = graph.groups[0]
    assert group.producers == ["stem", "branch"]
    assert group.consumers == ["branch", "head"]


def test_concat_keeps_inputs_as_separate_groups_at_their_offsets():
    graph = analyze_dependencies(Concat(), torch.randn(2, 3, 8, 8))
    assert sizes(graph) == {"a": 4, "b": 6}
    np.testing.assert_array_equal(member(graph.group("a"), "c.weight", 1).index, [0, 1, 2, 3] + [-1] * 6)
    np.testing.assert_array_equal(member(graph.group("b"), "c.weight", 1).index, [-1] * 4 + list(range(6)))


def test_flatten_to_linear_maps_each_channel_to_its_block_of_features():
    graph = analyze_dependencies(DigitsCNN(), torch.zeros(2, 1, 8, 8))
    index = member(graph.group("conv2"), "fc1.weight", 1).index
    assert index.shape == (64 * 16,)
    np.testing.assert_array_equal(index, np.repeat(np.arange(64), 16))


class Depthwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.pw = nn.Conv2d(3, 8, 1)
        self.dw = nn.Conv2d(8, 16, 3, padding=1, groups=8)
        self.out = nn.Conv2d(16, 2, 1)

    def forward(self, x):
        return self.out(self.dw(self.pw(x)))


def test_depthwise_conv_ties_each_input_channel_to_its_outputs():
    graph = analyze_dependencies(Depthwise(), torch.randn(1, 3, 8, 8))
    assert sizes(graph) == {"pw": 8}
    np.testing.assert_array_equal(member(graph.groups[0], "dw.weight", 0).index, np.repeat(np.arange(8), 2))


class Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.g = nn.Conv2d(8, 12, 3, padding=1, groups=4)
        self.out = nn.Conv2d(12, 2, 1)

    def forward(self, x):
        return self.out(self.g(self.a(x)))


def test_grouped_conv_removes_the_same_positions_from_every_group():
    graph = analyze_dependencies(Grouped(), torch.randn(1, 3, 8, 8))
    assert sizes(graph) == {"a": 2, "g": 3}
    np.testing.assert_array_equal(member(graph.group("a"), "a.weight", 0).index, [0, 1] * 4)
    np.testing.assert_array_equal(member(graph.group("g"), "g.weight", 0).index, [0, 1, 2] * 4)


class Chunked(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.left = nn.Conv2d(4, 2, 1)
        self.right = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        left, right = self.a(x).chunk(2, dim=1)
        return self.left(left) + self.right(right)


def test_chunk_ties_the_same_position_of_every_chunk():
    graph = analyze_dependencies(Chunked(), torch.randn(1, 3, 8, 8))
    assert sizes(graph) == {"a": 4}
    np.testing.assert_array_equal(member(graph.group("a"), "a.weight", 0).index, [0, 1, 2, 3, 0, 1, 2, 3])


class SliceModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(3, 8, 1)
        self.out = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        return self.out(self.a(x)[:, :3]) + self.b(x)[:, :2].sum()


def test_slicing_channels_with_literal_bounds_keeps_them():
    graph = analyze_dependencies(SliceModel(), torch.randn(1, 3, 8, 8))
    assert graph.groups == []


class Norms(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.ln = nn.LayerNorm(8)
        self.b = nn.Linear(8, 8)
        self.out = nn.Linear(8, 2)
        self.c = nn.Conv2d(3, 8, 1)
        self.gn = nn.GroupNorm(4, 8)
        self.d = nn.Conv2d(8, 2, 1)

    def forward(self, x, image):
        y = self.out(torch.relu(self.b(self.ln(self.a(x)))))
        return y, self.d(self.gn(self.c(image)))


def test_layernorm_marks_its_group_inexact_and_groupnorm_removes_whole_groups():
    graph = analyze_dependencies(Norms(), (torch.randn(2, 4), torch.randn(2, 3, 4, 4)))
    assert sizes(graph) == {"a": 8, "b": 8, "c": 4}
    assert not graph.group("a").exact
    assert graph.group("b").exact
    np.testing.assert_array_equal(member(graph.group("c"), "gn.weight", 0).index, np.repeat(np.arange(4), 2))
    assert graph.group("c").exact


class Embedder(nn.Module):
    def __init__(self):
        super().__init__()
        self.tokens = nn.Embedding(20, 8)
        self.pos = nn.Parameter(torch.zeros(1, 5, 8))
        self.out = nn.Linear(8, 3)

    def forward(self, ids):
        return self.out(self.tokens(ids) + self.pos)


def test_embedding_width_is_a_group_including_positional_parameters():
    graph = analyze_dependencies(Embedder(), torch.randint(0, 20, (2, 5)))
    group = graph.group("tokens")
    assert group.size == 8
    assert {(m.tensor, m.dim) for m in group.members} == {("tokens.weight", 1), ("pos", 2), ("out.weight", 1)}


class UpModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 1)
        self.act = nn.PReLU(6)
        self.up = nn.ConvTranspose2d(6, 4, 2, stride=2)
        self.out = nn.Conv2d(4, 1, 1)

    def forward(self, x):
        return self.out(self.up(self.act(self.a(x))))


def test_transposed_conv_reads_dim0_and_produces_dim1_and_prelu_follows():
    graph = analyze_dependencies(UpModel(), torch.randn(1, 3, 4, 4))
    assert sizes(graph) == {"a": 6, "up": 4}
    assert {(m.tensor, m.dim) for m in graph.group("a").members} >= {("act.weight", 0), ("up.weight", 0)}
    assert member(graph.group("up"), "up.weight", 1).role == "producer"


def test_multihead_attention_prunes_whole_heads_paired_with_embedding_blocks():
    layer = nn.TransformerEncoderLayer(16, 4, 32, batch_first=True, dropout=0.0)
    model = nn.Sequential(nn.Linear(6, 16), layer, nn.Linear(16, 2))
    graph = analyze_dependencies(model.eval(), torch.randn(2, 5, 6))
    heads = graph.group("0")
    assert heads.kind == "heads" and heads.size == 4
    np.testing.assert_array_equal(member(heads, "1.self_attn.in_proj_weight", 0).index, np.tile(np.repeat(np.arange(4), 4), 3))
    assert graph.group("1.linear1").size == 32


class GQA(nn.Module):
    """Eight query heads sharing two key/value heads, through SDPA's enable_gqa."""

    def __init__(self):
        super().__init__()
        self.q = nn.Linear(16, 32)
        self.k = nn.Linear(16, 8)
        self.v = nn.Linear(16, 8)
        self.o = nn.Linear(32, 16)

    def forward(self, x):
        b, t, _ = x.shape
        q = self.q(x).view(b, t, -1, 4).transpose(1, 2)
        k = self.k(x).view(b, t, -1, 4).transpose(1, 2)
        v = self.v(x).view(b, t, -1, 4).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        return self.o(out.transpose(1, 2).reshape(b, t, -1))


def test_grouped_query_attention_keeps_whole_key_value_groups():
    graph = analyze_dependencies(GQA(), torch.randn(2, 3, 16))
    group = graph.group("q")
    assert group.kind == "heads" and group.size == 2
    np.testing.assert_array_equal(member(group, "q.weight", 0).index, np.repeat([0, 1], 16))
    np.testing.assert_array_equal(member(group, "k.weight", 0).index, np.repeat([0, 1], 4))


class Unsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(3, 4, 1)
        self.out = nn.Conv2d(7, 2, 1)

    def forward(self, x):
        return self.out(torch.diff(self.a(x), dim=1)) + self.b(x).sum(1, keepdim=True)


def test_ops_without_a_rule_are_listed_and_their_channels_kept():
    graph = analyze_dependencies(Unsupported(), torch.randn(1, 3, 4, 4))
    assert sizes(graph) == {"b": 4}
    assert graph.unsupported == [
        (
            "<root>:diff",
            "no rule for op 'diff' in module '<root>' (Unsupported); describe the module with "
            "rules={Unsupported: YourRule()} (a prunekit.torch.structured.rules.ChannelRule)",
        )
    ]


def test_strict_mode_raises_on_ops_without_a_rule():
    with pytest.raises(ConfigError, match="diff"):
        analyze_dependencies(Unsupported(), torch.randn(1, 3, 4, 4), strict=True)


def test_leaf_modules_are_black_boxes_keeping_their_channels():
    graph = analyze_dependencies(ConvBNConv(), torch.randn(1, 3, 8, 8), leaf_modules=["bn1"])
    assert graph.groups == []
    assert graph.unsupported == [("bn1:leaf_module", "leaf module (run as a black box)")]


def test_unknown_leaf_module_name_raises():
    with pytest.raises(LayerNotFoundError, match="bn9"):
        analyze_dependencies(ConvBNConv(), torch.randn(1, 3, 8, 8), leaf_modules=["bn9"])


class KeywordModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, 2)

    def forward(self, features, scale=None):
        return self.b(torch.relu(self.a(features))) * scale


def test_dict_and_tuple_inputs_are_both_accepted():
    model = KeywordModel()
    by_dict = analyze_dependencies(model, {"features": torch.randn(2, 4), "scale": torch.ones(2, 1)})
    by_tuple = analyze_dependencies(model, (torch.randn(2, 4), torch.ones(2, 1)))
    assert sizes(by_dict) == sizes(by_tuple) == {"a": 6}


def test_inputs_that_do_not_run_the_model_raise_naming_the_failing_call():
    with pytest.raises(ConfigError, match=r"'conv1:conv2d'.*example_inputs"):
        analyze_dependencies(DigitsCNN(), torch.zeros(2, 3, 8, 8))


def test_analysis_leaves_training_mode_and_weights_unchanged():
    model = DigitsCNN().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    analyze_dependencies(model, torch.randn(4, 1, 8, 8))
    assert model.training and model.bn1.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


class Wide(nn.Module):
    """Over a million parameters, so tracing runs on fake tensors; caches a tensor on itself and
    optionally branches on a tensor value (which fake tensors cannot do)."""

    def __init__(self, branch: bool):
        super().__init__()
        self.branch = branch
        self.a = nn.Linear(1100, 1000)
        self.b = nn.Linear(1000, 3)

    def forward(self, x):
        h = torch.relu(self.a(x))
        self.cached = h
        if self.branch and bool(h.sum() > -1):
            h = h * 2
        return self.b(h)


@pytest.mark.parametrize("branch", [False, True])
def test_large_models_trace_on_fake_tensors_or_fall_back_to_a_real_run(branch):
    model = Wide(branch).eval()
    model.cached = "before"
    graph = analyze_dependencies(model, torch.randn(2, 1100))
    assert sizes(graph) == {"a": 1000}
    assert model.cached == "before"
