"""Never silently unpruned: every prunable-looking dimension left alone is reported with its reason;
strict mode raises on the first; a MACs shortfall of more than 10 % warns and names the causes."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

from prunekit.cli import main
from prunekit.errors import ConfigError
from prunekit.torch import analyze_dependencies, prune_channels
from prunekit.torch.structured.prune import PruningShortfallWarning
from tests.torch.custom_layers import RULES, CustomNet
from tests.torch.structured_helpers import one_torch_thread  # noqa: F401

OUTPUT = "coupled to the model output (pass protect_outputs=False to prune it)"


class Diffed(nn.Module):
    """`a` feeds torch.diff, which has no rule; `b` is an ordinary prunable conv."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(3, 6, 1)
        self.c = nn.Conv2d(6, 7, 1)
        self.out = nn.Conv2d(7, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.diff(self.a(x), dim=1) + self.c(torch.relu(self.b(x))))


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)).eval()


def test_each_dimension_left_alone_is_listed_with_its_reason():
    graph = analyze_dependencies(Diffed(), torch.randn(1, 3, 4, 4))
    entries = [(e.tensor, e.dim, e.channels, e.size, e.reason) for e in graph.left_alone]
    assert entries[0][:4] == ("a.weight", 0, 8, 8)
    assert entries[0][4].startswith("unsupported op diff at node <root>:diff (no rule for op 'diff'")
    # c's 7 outputs meet diff's (unprunable) output in the add
    assert entries[1] == (
        "c.weight",
        0,
        7,
        7,
        "tied at node <root>:add to positions that are not prunable channels (batch, space, tokens or inputs)",
    )
    assert entries[2] == ("out.weight", 0, 2, 2, OUTPUT)
    assert [g.name for g in graph.groups] == ["b"]
    assert "channels left alone:" in graph.summary() and "a (a.weight dim 0, 8 of 8 channels)" in graph.summary()


def test_strict_raises_on_the_first_dimension_left_alone_with_the_same_text():
    graph = analyze_dependencies(Diffed(), torch.randn(1, 3, 4, 4))
    with pytest.raises(ConfigError) as caught:
        analyze_dependencies(Diffed(), torch.randn(1, 3, 4, 4), strict=True)
    assert str(caught.value).startswith(f"strict=True: {graph.left_alone[0].text}. 1 channel dimension(s)")


def test_outputs_alone_do_not_trip_strict_mode():
    graph = analyze_dependencies(mlp(), torch.randn(2, 4), strict=True)
    assert [(e.tensor, e.reason) for e in graph.left_alone] == [("4.weight", OUTPUT)]


def test_weights_of_a_custom_op_without_a_rule_are_listed_too():
    graph = analyze_dependencies(CustomNet(), torch.randn(2, 5, 6))
    listed = {e.tensor: e.reason for e in graph.left_alone}
    assert set(listed) == {"inp.weight", "glu.weight", "out.weight"}
    assert listed["glu.weight"].startswith("unsupported op gated_linear.default at node glu:gated_linear.default")
    assert "rules={GatedLinear: YourRule()}" in listed["glu.weight"]


def test_the_report_lists_user_ignores_and_analysis_reasons():
    with pytest.warns(PruningShortfallWarning, match=r"left alone: 2: user ignore \(ignore_outputs='2'\)"):
        result = prune_channels(mlp(), torch.randn(2, 4), 0.5, ignore_outputs=["2"])
    assert result.report.left_alone == [
        ("4 (4.weight dim 0, 2 of 2 channels)", OUTPUT),
        ("2", "user ignore (ignore_outputs='2')"),
    ]
    assert "channels kept: 2: user ignore (ignore_outputs='2')" in str(result.report)
    assert json.loads(json.dumps(result.report.to_dict()))["left_alone"][1] == ["2", "user ignore (ignore_outputs='2')"]


def test_requested_macs_ratio_is_computed_from_prunable_dimensions_and_met_without_warning():
    # Linear(4, 8): only its outputs shrink (inputs are the model's): 32 -> 16 MACs; Linear(8, 8): both: 64 -> 16;
    # Linear(8, 2): only its inputs (outputs are the model's): 16 -> 8. Requested = 112 / 40.
    with warnings.catch_warnings():
        warnings.simplefilter("error", PruningShortfallWarning)
        result = prune_channels(mlp(), torch.randn(1, 4), 0.5)
    assert result.report.requested_macs_ratio == pytest.approx(112 / 40)
    assert result.report.macs_ratio == pytest.approx(112 / 40)


def test_a_shortfall_over_ten_percent_warns_and_names_the_dimensions_left_alone():
    with pytest.warns(PruningShortfallWarning) as caught:
        result = prune_channels(Diffed(), torch.randn(1, 3, 4, 4), 0.5)
    message = str(caught[0].message)
    assert message.startswith(f"structured pruning removed {result.report.macs_ratio:.2f}x of the MACs where the requested")
    assert "left alone: a (a.weight dim 0, 8 of 8 channels): unsupported op diff at node <root>:diff" in message
    assert result.report.requested_macs_ratio > 1.1 * result.report.macs_ratio


def test_layer_ratios_lower_the_request_instead_of_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", PruningShortfallWarning)
        result = prune_channels(mlp(), torch.randn(1, 4), 0.5, layer_ratios={"2": 0.0})
    # group "0" halves (Linear 0 out, Linear 2 in); group "2" is asked nothing: 32->16, 64->32, 16->16
    assert result.report.requested_macs_ratio == pytest.approx(112 / 64)


def test_custom_rules_clear_the_shortfall():
    with warnings.catch_warnings():
        warnings.simplefilter("error", PruningShortfallWarning)
        result = prune_channels(CustomNet(), torch.randn(2, 5, 6), 0.5, rules=RULES)
    assert result.report.macs_ratio >= 0.9 * result.report.requested_macs_ratio


def test_inspect_structured_prints_and_writes_groups_and_dimensions_left_alone(tmp_path, capsys):
    out = tmp_path / "inspect.json"
    code = main(
        [
            "inspect",
            "prunekit.torch:DigitsCNN",
            "--input-shape",
            "1,8,8",
            "--structured",
            "--batch-sizes",
            "1",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "channels left alone" in printed and "coupled to the model output" in printed
    data = json.loads(out.read_text())["structured"]
    assert [(g["name"], g["size"]) for g in data["groups"]] == [("conv1", 32), ("conv2", 64), ("fc1", 128)]
    assert data["left_alone"] == [
        {"module": "fc2", "tensor": "fc2.weight", "dim": 0, "channels": 10, "size": 10, "reason": OUTPUT}
    ]
