"""Sensitivity: a layer x ratio table, monotone on a crafted model, the same with two worker processes."""

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.torch.tradeoffs.sensitivity import Accuracy, MetricError, SensitivityTable, analyze_sensitivity, prunable_layers


class PositiveChain(nn.Module):
    """Two linears with positive weights of distinct magnitudes: every pruned weight lowers the output."""

    def __init__(self):
        super().__init__()
        self.first = nn.Linear(8, 6, bias=False)
        self.second = nn.Linear(6, 1, bias=False)
        with torch.no_grad():
            self.first.weight.copy_(torch.arange(1, 49, dtype=torch.float32).reshape(6, 8) / 48)
            self.second.weight.copy_(torch.arange(1, 7, dtype=torch.float32).reshape(1, 6) / 6)

    def forward(self, x):
        return self.second(self.first(x))


class OutputMean:
    """Mean output on all-ones inputs: falls strictly as more positive weights are zeroed."""

    def __call__(self, model):
        with torch.no_grad():
            return float(model(torch.ones(4, 8)).mean())


def raising_metric(model):
    raise RuntimeError("validation data missing")


def test_table_has_one_row_per_layer_and_one_column_per_ratio():
    table = analyze_sensitivity(PositiveChain(), OutputMean(), ratios=(0.25, 0.5, 0.75))
    assert table.layers == ["first", "second"]
    assert table.to_array().shape == (2, 3)


def test_scores_fall_strictly_as_each_layer_is_pruned_harder():
    table = analyze_sensitivity(PositiveChain(), OutputMean(), ratios=(0.2, 0.4, 0.6, 0.8))
    for layer in table.layers:
        scores = [table.baseline] + table.scores[layer]
        assert all(a > b for a, b in zip(scores, scores[1:])), (layer, scores)


def test_drop_is_baseline_minus_score():
    table = analyze_sensitivity(PositiveChain(), OutputMean(), ratios=(0.5,))
    assert table.drop("first", 0.5) == pytest.approx(table.baseline - table.scores["first"][0])
    assert table.drop("first", 0.0) == 0


def test_analysis_leaves_the_model_unchanged():
    model = PositiveChain()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    analyze_sensitivity(model, OutputMean(), ratios=(0.9,))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_two_worker_processes_give_the_same_table():
    model = PositiveChain()
    one = analyze_sensitivity(model, OutputMean(), ratios=(0.25, 0.75))
    two = analyze_sensitivity(model, OutputMean(), ratios=(0.25, 0.75), workers=2)
    assert two.to_dict() == one.to_dict()


def test_a_raising_metric_names_the_model_it_failed_on():
    with pytest.raises(MetricError, match="unpruned model.*validation data missing"):
        analyze_sensitivity(PositiveChain(), raising_metric)


def test_unknown_layer_is_reported_with_the_prunable_ones():
    with pytest.raises(ConfigError, match=r"\['third'\].*first"):
        analyze_sensitivity(PositiveChain(), OutputMean(), layers=["third"])


def test_ratios_must_be_in_the_open_unit_interval():
    with pytest.raises(ConfigError, match="ratios"):
        analyze_sensitivity(PositiveChain(), OutputMean(), ratios=(0.5, 1.0))


def test_table_round_trips_through_a_dict():
    table = SensitivityTable(0.9, [0.5], {"fc": [0.8]}, "accuracy")
    assert SensitivityTable.from_dict(table.to_dict()) == table


def test_accuracy_metric_counts_correct_argmax():
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    metric = Accuracy(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), torch.tensor([0, 1, 1]))
    assert metric(model) == pytest.approx(2 / 3)


def test_prunable_layers_of_a_chain_are_its_linears():
    assert prunable_layers(PositiveChain()) == ["first", "second"]


def test_heatmap_is_written_as_png_and_svg(tmp_path):
    table = analyze_sensitivity(PositiveChain(), OutputMean(), ratios=(0.5, 0.9))
    figure = table.heatmap(stem=tmp_path / "sensitivity")
    assert (tmp_path / "sensitivity.png").read_bytes() == figure.png
    assert b"<svg" in (tmp_path / "sensitivity.svg").read_bytes()


def negative_macs(model):
    from prunekit.torch import count_macs

    return -float(count_macs(model, torch.zeros(1, 1, 8, 8)).total)


def test_channel_pruner_measures_structured_removal_per_layer():
    from prunekit.torch import DigitsCNN
    from prunekit.torch.tradeoffs.sensitivity import ChannelPruner

    table = analyze_sensitivity(
        DigitsCNN(channels=(8, 16), hidden=32),
        negative_macs,
        ratios=(0.5,),
        layers=["conv1", "fc2"],
        prune=ChannelPruner(torch.zeros(1, 1, 8, 8)),
    )
    assert table.score("conv1", 0.5) > table.baseline  # fewer channels, fewer MACs
    assert table.score("fc2", 0.5) == table.baseline  # the model's outputs are never removed
