"""Channel ratios for a measured budget (latency, MACs, params, a callable): meets it, prefers insensitive layers, clear errors."""

import functools

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.torch import DigitsCNN
from prunekit.torch.measure.latency import latency_ratio
from prunekit.torch.measure.macs import count_macs, count_params
from prunekit.torch.tradeoffs import structured_allocation
from prunekit.torch.tradeoffs.allocation import allocation_table
from prunekit.torch.tradeoffs.sensitivity import Accuracy, ChannelPruner, SensitivityTable, analyze_sensitivity
from prunekit.torch.tradeoffs.structured_allocation import (
    allocate_channels,
    apply_channel_ratios,
    channel_layers,
    compare_channel_allocations,
    global_channels,
    uniform_channels,
)
from tests.torch.cost_clock import MacClock
from tests.torch.pruned_digits import dense_cnn, digits
from tests.torch.structured_helpers import one_torch_thread  # noqa: F401  (autouse: timings on one thread)

EXAMPLE = torch.zeros(1, 1, 8, 8)
LAYERS = ["conv1", "conv2", "fc1"]


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    return DigitsCNN().eval()


def flat_table(layers, drops=None):
    """A sensitivity table with the given drop per layer at every ratio (0.01 by default)."""
    drops = drops or {}
    return SensitivityTable(
        1.0, [0.25, 0.5, 0.75, 0.9], {layer: [1.0 - drops.get(layer, 0.01) * r for r in (1, 2, 3, 4)] for layer in layers}
    )


def macs_fraction(model, pruned):
    return count_macs(pruned, EXAMPLE).total / count_macs(model, EXAMPLE).total


def test_channel_layers_are_the_groups_prune_channels_can_shrink(cnn):
    assert channel_layers(cnn, EXAMPLE) == LAYERS  # fc2 makes the model's output: protected


@pytest.mark.parametrize("allocator", ["sensitivity", "uniform", "global"])
def test_a_macs_budget_is_met_within_two_percent_measured_on_the_smaller_model(cnn, allocator):
    if allocator == "sensitivity":
        allocation = allocate_channels(flat_table(LAYERS), cnn, EXAMPLE, 0.4, "macs")
    else:
        allocate = uniform_channels if allocator == "uniform" else global_channels
        allocation = allocate(cnn, EXAMPLE, LAYERS, 0.4, "macs")
    smaller = apply_channel_ratios(cnn, EXAMPLE, allocation.ratios)
    measured = macs_fraction(cnn, smaller)
    assert 0.38 <= measured <= 0.4
    assert allocation.cost_fraction == pytest.approx(measured)
    assert allocation.cost == pytest.approx(measured * count_macs(cnn, EXAMPLE).total)
    if allocator == "uniform":
        assert len(set(allocation.ratios.values())) == 1


def test_the_greedy_path_spends_the_budget_on_insensitive_layers_first(cnn):
    table = flat_table(LAYERS, {"conv1": 0.5, "conv2": 0.5, "fc1": 0.001})
    allocation = allocate_channels(table, cnn, EXAMPLE, 0.5, "params")
    assert allocation.ratios["conv1"] == 0.0 and allocation.ratios["conv2"] == 0.0
    assert allocation.ratios["fc1"] > 0.4  # fc1 holds 131,072 of the 151,498 parameters
    smaller = apply_channel_ratios(cnn, EXAMPLE, allocation.ratios)
    assert 0.48 <= count_params(smaller) / count_params(cnn) <= 0.5
    assert allocation.predicted_drop == pytest.approx(table.interpolated_drop("fc1", allocation.ratios["fc1"]))


def test_a_callable_cost_is_measured_relative_to_the_dense_model(cnn):
    def conv_weights(model):
        return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d))

    allocation = allocate_channels(flat_table(["conv1", "conv2"]), cnn, EXAMPLE, 0.3, conv_weights)
    smaller = apply_channel_ratios(cnn, EXAMPLE, allocation.ratios)
    assert allocation.target == "conv_weights"
    assert 0.28 <= conv_weights(smaller) / conv_weights(cnn) <= 0.3
    assert allocation.ratios["conv1"] + allocation.ratios["conv2"] > 0


def _linear_macs(model: nn.Module) -> int:
    return sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))


def test_a_measured_latency_budget_is_met_on_a_compute_bound_model(monkeypatch):
    # latency by a clock that counts multiply-adds (real timings: benchmarks/latency_budget.py), so the test checks
    # the allocator's search and bookkeeping exactly, whatever else the machine runs
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 768), nn.ReLU(), nn.Linear(768, 768), nn.ReLU(), nn.Linear(768, 10)).eval()
    batch = torch.randn(128, 256)
    table = flat_table(["0", "2"], {"0": 0.02, "2": 0.01})
    with MacClock().running() as clock:
        monkeypatch.setattr(structured_allocation, "latency_ratio", functools.partial(latency_ratio, clock=clock))
        allocation = allocate_channels(table, model, batch, 0.5, "latency", rounds=3)
        smaller = apply_channel_ratios(model, batch, allocation.ratios)
        remeasured = latency_ratio(smaller, model, batch, rounds=3, clock=clock)
    assert clock.reads > 0 and allocation.target == "latency"
    assert 0.45 <= allocation.cost_fraction <= 0.5  # within the allocator's tolerance under the budget
    assert remeasured == pytest.approx(_linear_macs(smaller) / _linear_macs(model), rel=1e-9)
    assert allocation.cost_fraction == pytest.approx(remeasured, rel=1e-9)  # it reports what the chosen model costs
    assert allocation.ratios["0"] == 0.0 and allocation.ratios["2"] > 0.6  # the less sensitive layer alone pays


def test_compare_on_the_digits_cnn_prints_three_allocations_at_the_same_latency_budget():
    model, split = dense_cnn(), digits()
    batch = torch.zeros(64, 1, 8, 8)
    table = analyze_sensitivity(
        model,
        Accuracy(split.x_val, split.y_val),
        (0.25, 0.5, 0.75, 0.9),
        layers=channel_layers(model, batch),
        prune=ChannelPruner(batch),
    )
    rows = compare_channel_allocations(model, table, Accuracy(split.x_test, split.y_test), batch, 0.5, "latency", rounds=20)
    allocation_table(rows, "digits CNN, 50% of dense latency at batch 64, channels removed, no fine-tuning").print()
    assert [row["method"] for row in rows] == ["sensitivity", "uniform", "global"]
    for row in rows:
        assert row["cost_fraction"] <= 0.5 and row["target"] == "latency"
        assert 0 <= row["metric"] <= 1 and set(row["ratios"]) == set(LAYERS)


def test_layers_without_removable_channels_are_refused_with_the_ones_that_work(cnn):
    with pytest.raises(ConfigError, match=r"layers \['fc2'\] have no removable output channels.*\['conv1', 'conv2', 'fc1'\]"):
        allocate_channels(flat_table(["fc2"]), cnn, EXAMPLE, 0.5, "macs")


def test_an_unreachable_budget_names_the_closest_achievable(cnn):
    with pytest.raises(ConfigError, match=r"macs budget of 1\.0% of dense cannot be met.*measured \d+\.\d% of dense"):
        allocate_channels(flat_table(LAYERS), cnn, EXAMPLE, 0.01, "macs")


@pytest.mark.parametrize(
    "target, message", [("size", "for file size remove weights instead"), ("flops", "target should be one of")]
)
def test_unknown_targets_say_what_works(cnn, target, message):
    with pytest.raises(ConfigError, match=message):
        allocate_channels(flat_table(LAYERS), cnn, EXAMPLE, 0.5, target)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"budget": 1.5}, "budget should be a fraction"),
        ({"tolerance": -0.1}, "tolerance should be"),
        ({"steps": 0}, "steps should be"),
        ({"scope": "global"}, r"options \['scope'\] are chosen by the allocator"),
    ],
)
def test_bad_search_settings_are_refused(cnn, options, message):
    arguments = {"budget": 0.5, **options}
    budget = arguments.pop("budget")
    with pytest.raises(ConfigError, match=message):
        allocate_channels(flat_table(LAYERS), cnn, EXAMPLE, budget, "macs", **arguments)


def test_a_full_budget_keeps_the_model_whole(cnn):
    allocation = uniform_channels(cnn, EXAMPLE, LAYERS, 1.0, "macs")
    assert allocation.ratios == {layer: 0.0 for layer in LAYERS} and allocation.cost_fraction == 1.0
