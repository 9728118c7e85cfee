"""Keras sensitivity and per-layer budgets: exact tables, budgets met within 2%, greedy beats uniform, clear errors."""

import keras
import numpy as np
import pytest

import prunekit.keras as pk
from prunekit.errors import ConfigError
from prunekit.keras.measure.summary import summarize

KERNELS = ["conv1", "conv2", "fc1", "fc2"]


def positive_chain():
    """x (4) -> first (4x4 kernel 1..16) -> second (kernel 1..4), no biases: every pruned weight lowers the output."""
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(4, use_bias=False, name="first")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1, use_bias=False, name="second")(hidden))
    model.get_layer("first").kernel.assign(np.arange(1, 17, dtype="float32").reshape(4, 4))
    model.get_layer("second").kernel.assign(np.arange(1, 5, dtype="float32").reshape(4, 1))
    return model


def output_on_ones(model):
    return float(np.asarray(model(np.ones((1, 4), "float32"))).sum())


def bitmap_bytes(model, layers):
    """Bytes of the bitmap-sparse encoding, counted here from the weights: float32 values, one bit per kernel entry."""
    kernels = {id(model.get_layer(name).kernel) for name in layers}
    total = 0.0
    for weight in model.trainable_weights:
        values = np.asarray(weight.numpy())
        total += np.count_nonzero(values) * 4 + values.size / 8 if id(weight) in kernels else values.size * 4
    return total


def measured_fraction(dense, pruned, layers, target):
    if target == "macs":
        return summarize(pruned).sparse_macs / summarize(dense).macs
    if target == "params":
        return summarize(pruned).nonzeros / summarize(dense).params
    return bitmap_bytes(pruned, layers) / bitmap_bytes(dense, layers)


@pytest.fixture(scope="module")
def table(dense_cnn, digits):
    return pk.analyze_sensitivity(dense_cnn, pk.Accuracy(digits.x_val, digits.y_val), ratios=(0.3, 0.5, 0.7, 0.8, 0.9, 0.95))


def test_table_has_one_row_per_prunable_layer_and_one_column_per_ratio(table):
    assert table.layers == KERNELS
    assert table.to_array().shape == (4, 6)
    assert 0.9 < table.baseline <= 1.0


def test_scores_on_a_positive_chain_are_the_hand_computed_outputs():
    model = positive_chain()
    table = pk.analyze_sensitivity(model, output_on_ones, ratios=(0.25, 0.5, 0.75))
    # dense: sum_j second_j * (column j of first) = 1*28 + 2*32 + 3*36 + 4*40 = 360
    assert table.baseline == 360
    assert table.scores == {
        "first": [330, 260, 150],  # rows 1..4, 5..8, 9..12 of first zeroed in turn
        "second": [332, 268, 160],
    }  # second's 1, 2, 3 zeroed in turn
    assert np.asarray(model.get_layer("first").kernel.numpy()).min() == 1  # the model itself is untouched


def test_apply_ratios_zeroes_exactly_round_ratio_times_numel_and_leaves_the_model_dense(dense_cnn):
    pruned = pk.apply_ratios(dense_cnn, {"conv2": 0.8, "fc1": 0.333})
    assert int((pruned.get_layer("conv2").kernel.numpy() == 0).sum()) == round(0.8 * 3 * 3 * 32 * 64)
    assert int((pruned.get_layer("fc1").kernel.numpy() == 0).sum()) == round(0.333 * 1024 * 128)
    assert int((pruned.get_layer("conv1").kernel.numpy() == 0).sum()) == 0
    assert int((dense_cnn.get_layer("conv2").kernel.numpy() == 0).sum()) == 0
    assert [layer.name for layer in pruned.layers] == [layer.name for layer in dense_cnn.layers]


@pytest.mark.parametrize("target", ["macs", "params", "size"])
def test_allocation_meets_the_budget_within_two_percent_measured_on_the_pruned_model(dense_cnn, table, target):
    allocation = pk.allocate_ratios(table, dense_cnn, budget=0.3, target=target)
    pruned = pk.apply_ratios(dense_cnn, allocation.ratios)
    assert measured_fraction(dense_cnn, pruned, table.layers, target) == pytest.approx(0.3, abs=0.02 * 0.3)
    assert allocation.cost_fraction == pytest.approx(0.3)


def test_sensitivity_allocation_scores_at_least_as_well_as_uniform_at_the_same_macs_budget(dense_cnn, table, digits):
    rows = pk.compare_allocations(dense_cnn, table, pk.Accuracy(digits.x_test, digits.y_test), budget=0.25, target="macs")
    pk.allocation_table(rows, "Keras digits CNN, 25% of dense MACs, no fine-tuning (test accuracy)").print()
    by_method = {row["method"]: row for row in rows}
    print({method: round(row["metric"], 4) for method, row in by_method.items()})
    assert list(by_method) == ["sensitivity", "uniform", "global"]
    assert by_method["sensitivity"]["metric"] >= by_method["uniform"]["metric"]
    for row in rows:
        assert row["cost_fraction"] == pytest.approx(0.25, abs=0.02 * 0.25)


def test_greedy_prunes_the_insensitive_layer_first():
    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(10, name="first"), keras.layers.Dense(10, name="second")])
    table = pk.SensitivityTable(1.0, [0.5, 0.9], {"first": [0.5, 0.1], "second": [1.0, 0.99]})
    allocation = pk.allocate_ratios(table, model, budget=0.6, target="params")
    assert allocation.ratios["first"] == 0.0
    assert allocation.ratios["second"] == pytest.approx(0.88)  # 220 params, 20 biases fixed: 132 = 20 + 100 + 100 * 0.12
    assert allocation.predicted_drop == pytest.approx(0.01 * 0.38 / 0.4)  # second's drop, interpolated from 0.5 to 0.9


def test_uniform_ratio_solves_the_linear_budget():
    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(10, name="first"), keras.layers.Dense(10, name="second")])
    allocation = pk.uniform_ratios(model, ["first", "second"], budget=0.5, target="params")
    assert allocation.ratios == {"first": pytest.approx(0.55), "second": pytest.approx(0.55)}  # 20 + 200 * 0.45 = 110


def test_unreachable_budget_names_the_closest_achievable(dense_cnn, table):
    with pytest.raises(ConfigError, match=r"cannot be met: the closest achievable.*is [\d,]+ \(\d+\.\d% of dense\)"):
        pk.allocate_ratios(table, dense_cnn, budget=0.01, target="macs")


def test_latency_budget_points_to_channel_removal(dense_cnn, table):
    with pytest.raises(ConfigError, match="latency budget needs channel removal.*prunekit.keras.prune_channels"):
        pk.allocate_ratios(table, dense_cnn, budget=0.5, target="latency")


def test_a_layer_without_prunable_weights_is_named_with_the_prunable_ones(dense_cnn):
    with pytest.raises(ConfigError, match=r"\['bn1'\] are not prunable layers.*'conv1', 'conv2', 'fc1', 'fc2'"):
        pk.analyze_sensitivity(dense_cnn, output_on_ones, ratios=(0.5,), layers=["bn1"])
