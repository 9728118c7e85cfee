"""The public rule hook: custom modules described by ChannelRule objects passed per call."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.torch import analyze_dependencies, load_pruned, prune_channels, remove_channels, save_pruned
from prunekit.torch.structured.rules import ChannelRule, Coupling, RuleError, Shrink, TracedRule
from tests.torch.custom_layers import RULES, CustomNet, GatedLinear, GatedLinearRule, TimeNorm, TimeNormRule
from tests.torch.structured_helpers import one_torch_thread, silence_channels  # noqa: F401

X = torch.randn(4, 7, 6, generator=torch.Generator().manual_seed(0))


def net() -> CustomNet:
    torch.manual_seed(0)
    return CustomNet().eval()


def test_rules_make_custom_modules_prunable_groups():
    graph = analyze_dependencies(net(), X, rules=RULES)
    assert graph.unsupported == []
    assert [(g.name, g.size, g.exact) for g in graph.groups] == [("inp", 16, True), ("glu", 12, True)]
    inp, glu = graph.groups
    assert sorted((m.tensor, m.dim) for m in inp.members) == [
        ("glu.weight", 1),
        ("inp.bias", 0),
        ("inp.weight", 0),
        ("norm.bias", 0),
        ("norm.weight", 0),
    ]
    rows = next(m for m in glu.members if m.tensor == "glu.weight" and m.dim == 0)
    assert rows.index.tolist() == list(range(12)) * 2  # rows i and 12 + i are channel i
    assert glu.consumers == ["out"]


def test_removing_dead_channels_of_custom_modules_keeps_outputs_and_shrinks_exactly():
    model = net()
    graph = analyze_dependencies(model, X, rules=RULES)
    chosen = {"inp": np.array([0, 3, 4, 9, 10, 11, 14, 15]), "glu": np.array([1, 2, 5, 7, 8, 11])}
    for name, channels in chosen.items():
        silence_channels(graph, graph.group(name), channels)
    with torch.no_grad():
        expected = model(X)
    result = remove_channels(model, X, {k: v.tolist() for k, v in chosen.items()}, rules=RULES)
    pruned = result.model
    assert tuple(pruned.inp.weight.shape) == (8, 6)
    assert tuple(pruned.norm.weight.shape) == tuple(pruned.norm.bias.shape) == (8,)
    assert tuple(pruned.glu.weight.shape) == (12, 8) and tuple(pruned.glu.bias.shape) == (12,)
    assert tuple(pruned.out.weight.shape) == (3, 6)
    assert (pruned.norm.features, pruned.glu.hidden, pruned.glu.in_features) == (8, 6, 8)
    kept_rows = [r for r in range(12) if r not in chosen["glu"]]
    assert torch.equal(pruned.glu.weight[:6, :], model.glu.weight[kept_rows][:, [1, 2, 5, 6, 7, 8, 12, 13]])
    assert torch.equal(pruned.glu.weight[6:, :], model.glu.weight[[r + 12 for r in kept_rows]][:, [1, 2, 5, 6, 7, 8, 12, 13]])
    with torch.no_grad():
        torch.testing.assert_close(pruned(X), expected, atol=1e-5, rtol=0)


def test_prune_channels_with_rules_halves_channels_and_reloads_without_the_rules(tmp_path):
    model = net()
    result = prune_channels(model, X, 0.5, rules=RULES)
    assert [(g.name, g.channels_after) for g in result.report.groups] == [("inp", 8), ("glu", 6)]
    attributes = {(a["module"], a["name"]): a["value"] for a in result.plan["attributes"]}
    assert attributes[("norm", "features")] == 8 and attributes[("glu", "hidden")] == 6
    path = tmp_path / "custom.safetensors"
    save_pruned(result, path)
    reloaded = load_pruned(path, CustomNet)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(X), result.model(X), atol=0, rtol=0)


def test_a_module_without_a_rule_is_named_with_the_hook_to_use():
    graph = analyze_dependencies(net(), X)
    labels = {label: reason for label, reason in graph.unsupported}
    assert set(labels) == {"norm:time_norm.default", "glu:gated_linear.default"}
    assert "module 'norm' (TimeNorm)" in labels["norm:time_norm.default"]
    assert "rules={TimeNorm: YourRule()}" in labels["norm:time_norm.default"]
    assert graph.groups == []
    with pytest.raises(ConfigError, match=r"strict=True: inp .*rules=\{TimeNorm: YourRule\(\)\}"):
        analyze_dependencies(net(), X, strict=True)


class WrongWidthRule(GatedLinearRule):
    def couple(self, module: nn.Module, ctx: Coupling) -> None:
        x = ctx.input(0)
        rows = ctx.produce("weight", 0)
        ctx.set_output(0, [*x[:-1], rows])  # 24 rows, but the module returns 12 channels


def test_a_rule_giving_shapes_that_do_not_match_the_trace_raises_naming_rule_and_module():
    with pytest.raises(
        RuleError,
        match=r"rule WrongWidthRule for module 'glu' \(GatedLinear\): set_output\(0\) gave "
        r"labels of shape \(4, 7, 24\), but the traced output has shape \(4, 7, 12\)",
    ):
        prune_channels(net(), X, 0.5, rules={TimeNorm: TimeNormRule(), GatedLinear: WrongWidthRule()})


class ForgetfulRule(GatedLinearRule):
    def shrink(self, module: nn.Module, ctx: Shrink) -> dict[str, int]:
        return {}  # leaves `hidden` at 12: the forward then reshapes to the old width


def test_a_rule_whose_shrink_leaves_the_module_inconsistent_raises_naming_it_and_rolls_back():
    model = net()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(RuleError, match=r"rule ForgetfulRule for module 'glu' \(GatedLinear\): after pruning"):
        prune_channels(model, X, 0.5, rules={TimeNorm: TimeNormRule(), GatedLinear: ForgetfulRule()}, inplace=True)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.glu.hidden == 12


class NoOutputRule(ChannelRule):
    def couple(self, module: nn.Module, ctx: Coupling) -> None:
        ctx.tie(ctx.input(0)[-1], ctx.tensor("weight")[0])


def test_a_rule_that_does_not_describe_every_output_raises():
    with pytest.raises(RuleError, match=r"rule NoOutputRule for module 'norm' \(TimeNorm\): couple\(\) did not describe output"):
        analyze_dependencies(net(), X, rules={TimeNorm: NoOutputRule(), GatedLinear: GatedLinearRule()})


def test_inputs_a_rule_never_reads_keep_their_channels():
    class KeepAll(ChannelRule):
        def couple(self, module: nn.Module, ctx: Coupling) -> None:
            ctx.keep_output(0)

    graph = analyze_dependencies(net(), X, rules={TimeNorm: KeepAll(), GatedLinear: GatedLinearRule()})
    assert [g.name for g in graph.groups] == ["glu"]  # inp's channels meet an unread input: kept


class Scaled(nn.Module):
    """Scales channels, then reads its width from a tuple attribute: (b, c) -> (b, *self.dims)."""

    def __init__(self, width: int):
        super().__init__()
        self.dims = (width,)
        self.scale = nn.Parameter(torch.rand(width) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.scale).reshape(x.shape[0], *self.dims)


class DimsRule(TracedRule):
    """The forward is traced; shrink updates the size tuple it reads."""

    def shrink(self, module: nn.Module, ctx: Shrink) -> dict[str, tuple[int, ...]]:
        return {"dims": ctx.shape("scale")}


def test_traced_rule_updates_an_attribute_the_forward_reads():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), Scaled(8), nn.Linear(8, 2)).eval()
    with pytest.warns(UserWarning, match="left alone: 0 "):
        plain = prune_channels(model, torch.randn(3, 6), 0.5)
    assert plain.model[1].dims == (8,)  # the size tuple keeps the channels without the rule
    ruled = prune_channels(model, torch.randn(3, 6), 0.5, rules={Scaled: DimsRule()})
    assert (ruled.model[0].out_features, ruled.model[1].dims, ruled.model[2].in_features) == (4, (4,), 4)
    x = torch.randn(3, 6)
    assert ruled.model(x).shape == (3, 2)


def test_rules_argument_is_validated():
    with pytest.raises(ConfigError, match="rules should be a mapping"):
        prune_channels(net(), X, 0.5, rules=[TimeNormRule()])
    with pytest.raises(ConfigError, match="should be an nn.Module subclass"):
        prune_channels(net(), X, 0.5, rules={"TimeNorm": TimeNormRule()})
    with pytest.raises(ConfigError, match=r"rules\[TimeNorm\] should be a ChannelRule instance"):
        prune_channels(net(), X, 0.5, rules={TimeNorm: object()})


def test_iterative_pruning_passes_the_rules_to_every_step():
    from prunekit.torch import prune_channels_iteratively

    result = prune_channels_iteratively(net(), X, 0.5, steps=2, rules=RULES)
    pruned = result.model
    assert pruned.inp.out_features == pruned.norm.features == pruned.glu.in_features == 8
    assert pruned.glu.hidden == pruned.out.in_features == 6
