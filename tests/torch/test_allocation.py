"""Automatic per-layer ratios for a budget: meets it within 2%, beats uniform on the digits CNN, clear errors."""

import pytest
import torch
from torch import nn

from prunekit.data import load_digits
from prunekit.errors import ConfigError
from prunekit.torch import DigitsCNN, fit, make_loader
from prunekit.torch.tradeoffs.allocation import (
    allocate_ratios,
    allocation_table,
    apply_ratios,
    compare_allocations,
    cost_model,
    measured_cost,
    uniform_ratios,
)
from prunekit.torch.tradeoffs.sensitivity import Accuracy, SensitivityTable, analyze_sensitivity

EXAMPLE = torch.zeros(1, 1, 8, 8)


@pytest.fixture(scope="module")
def trained():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    split = load_digits()
    model = DigitsCNN()  # as shipped: channels 32/64, hidden 128
    fit(model, make_loader(split.x_train, split.y_train), epochs=4, lr=2e-3, progress=False)
    table = analyze_sensitivity(model, Accuracy(split.x_val, split.y_val), ratios=(0.3, 0.5, 0.7, 0.8, 0.9, 0.95))
    yield model, table, split
    torch.set_num_threads(previous)


@pytest.mark.parametrize("target", ["macs", "params", "size"])
def test_allocation_meets_the_budget_within_two_percent(trained, target):
    model, table, _ = trained
    allocation = allocate_ratios(table, model, EXAMPLE, budget=0.3, target=target)
    measured = measured_cost(apply_ratios(model, allocation.ratios), EXAMPLE, table.layers, target)
    dense = cost_model(model, EXAMPLE, table.layers, target).dense
    assert measured / dense == pytest.approx(0.3, abs=0.02 * 0.3)


def test_sensitivity_allocation_scores_at_least_as_well_as_uniform_at_the_same_macs_budget(trained):
    model, table, split = trained
    rows = compare_allocations(model, table, Accuracy(split.x_test, split.y_test), EXAMPLE, budget=0.25, target="macs")
    allocation_table(rows, "digits CNN, 25% of dense MACs, no fine-tuning (test accuracy)").print()
    by_method = {row["method"]: row for row in rows}
    print({method: round(row["metric"], 4) for method, row in by_method.items()})
    assert by_method["sensitivity"]["metric"] >= by_method["uniform"]["metric"]
    for row in rows:
        assert row["cost_fraction"] == pytest.approx(0.25, abs=0.02 * 0.25)


def test_unreachable_budget_names_the_closest_achievable(trained):
    model, table, _ = trained
    with pytest.raises(ConfigError, match=r"cannot be met: the closest achievable.*is [\d,]+ \(\d+\.\d% of dense\)"):
        allocate_ratios(table, model, EXAMPLE, budget=0.01, target="macs")


def test_latency_budget_points_to_channel_allocation(trained):
    model, table, _ = trained
    with pytest.raises(ConfigError, match="latency budget needs channel removal.*allocate_channels"):
        allocate_ratios(table, model, EXAMPLE, budget=0.5, target="latency")


def test_greedy_prunes_the_insensitive_layer_first():
    model = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 10))
    table = SensitivityTable(1.0, [0.5, 0.9], {"0": [0.5, 0.1], "1": [1.0, 0.99]})
    allocation = allocate_ratios(table, model, torch.zeros(1, 10), budget=0.6, target="params")
    assert allocation.ratios["0"] == 0.0
    assert allocation.ratios["1"] == pytest.approx(0.88)  # 220 params total, 20 biases fixed: 132 = 20 + 100 + 100 * 0.12


def test_uniform_ratio_solves_the_linear_budget():
    model = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 10))
    allocation = uniform_ratios(model, torch.zeros(1, 10), ["0", "1"], budget=0.5, target="params")
    assert allocation.ratios == {"0": pytest.approx(0.55), "1": pytest.approx(0.55)}  # 20 + 200 * 0.45 = 110


def test_search_meets_the_budget_and_scores_at_least_as_well_as_greedy_and_global_on_validation(trained):
    from prunekit.torch.tradeoffs.allocation import global_ratios, search_ratios

    model, table, split = trained
    validation = Accuracy(split.x_val, split.y_val)
    found = search_ratios(table, model, EXAMPLE, 0.25, validation, target="macs", steps=2)
    measured = measured_cost(apply_ratios(model, found.ratios), EXAMPLE, table.layers, "macs")
    assert measured / found.dense_cost == pytest.approx(0.25, abs=0.02 * 0.25)
    greedy = allocate_ratios(table, model, EXAMPLE, 0.25, "macs")
    threshold = global_ratios(model, EXAMPLE, table.layers, 0.25, "macs")
    score = validation(apply_ratios(model, found.ratios))
    assert score >= validation(apply_ratios(model, greedy.ratios))
    assert score >= validation(apply_ratios(model, threshold.ratios))
