"""The framework-free part of dynamic sparse training: update timing, drop fraction, distributions, drop and grow."""

from __future__ import annotations

import math

import numpy as np
import pytest

from prunekit import ConfigError
from prunekit.dynamic import (
    Constraint,
    Regrowth,
    check_constant_sparsity,
    check_layer_share,
    drop_and_grow,
    layer_sparsities,
    random_scores,
    regrow,
    regrowth_start,
    turnover,
)
from prunekit.schedules import ConstantSparsity, PolynomialDecay


def test_drop_fraction_decays_along_a_cosine_to_zero_at_end_step():
    regrowth = Regrowth("rigl", end_step=1100, update_interval=100, drop_fraction=0.4, begin_step=100)
    assert regrowth.drop_fraction_at(100) == pytest.approx(0.4)
    assert regrowth.drop_fraction_at(600) == pytest.approx(0.2)
    assert regrowth.drop_fraction_at(350) == pytest.approx(0.2 * (1 + math.cos(math.pi * 0.25)))
    assert regrowth.drop_fraction_at(1100) == pytest.approx(0.0)
    assert regrowth.drop_fraction_at(5000) == pytest.approx(0.0)


def test_updates_happen_every_interval_from_begin_step_and_stop_before_end_step():
    regrowth = Regrowth("set", end_step=500, update_interval=100, drop_fraction=0.3, begin_step=50)
    assert [s for s in range(700) if regrowth.is_update(s)] == [50, 150, 250, 350, 450]
    assert list(regrowth.update_steps()) == [50, 150, 250, 350, 450]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"drop_fraction": 0.0}, "drop_fraction should be in (0, 1)"),
        ({"drop_fraction": 1.0}, "drop_fraction should be in (0, 1)"),
        ({"update_interval": 0}, "update_interval should be an integer >= 1"),
        ({"method": "grow"}, "regrow should be one of ('set', 'rigl')"),
        ({"begin_step": 900}, "begin_step (900) should be < end_step (900)"),
    ],
)
def test_bad_regrowth_settings_are_named(kwargs, message):
    settings = {"method": "rigl", "end_step": 900, **kwargs}
    with pytest.raises(ConfigError) as error:
        Regrowth(**settings)
    assert message in str(error.value)


def test_a_schedule_still_pruning_during_regrowth_is_refused_with_the_step():
    schedule = PolynomialDecay(0.0, 0.9, begin_step=0, end_step=100, frequency=10)
    with pytest.raises(ConfigError) as error:
        check_constant_sparsity(schedule.sparsity_at, 0.9, 50, 300, "the schedule of 'fc1.weight'")
    assert "the schedule of 'fc1.weight' changes sparsity during the regrowth phase (step 50" in str(error.value)
    check_constant_sparsity(schedule.sparsity_at, 0.9, 100, 300, "schedule")  # from its end step on: fine
    assert regrowth_start(schedule.sparsity_at, 0.9, 300) == 100
    assert regrowth_start(ConstantSparsity(0.9, 0, 0, 1).sparsity_at, 0.9, 300) == 0


def test_uniform_distribution_gives_every_layer_the_sparsity():
    assert layer_sparsities({"a": (8, 4), "b": (2, 8)}, 0.75) == {"a": 0.75, "b": 0.75}


def test_erdos_renyi_density_is_proportional_to_in_plus_out_over_in_times_out_and_keeps_the_budget():
    shapes = {"fc1": (128, 64), "fc2": (64, 128), "fc3": (10, 64)}
    result = layer_sparsities(shapes, 0.9, "erdos_renyi")
    sizes = {n: int(np.prod(s)) for n, s in shapes.items()}
    raw = {n: (s[0] + s[1]) / (s[0] * s[1]) for n, s in shapes.items()}
    epsilon = 0.1 * sum(sizes.values()) / sum(raw[n] * sizes[n] for n in shapes)
    assert result == pytest.approx({n: 1 - epsilon * raw[n] for n in shapes})
    kept = sum((1 - result[n]) * sizes[n] for n in shapes)
    assert kept == pytest.approx(0.1 * sum(sizes.values()))


def test_erdos_renyi_kernel_counts_kernel_sizes_and_keeps_an_overfull_layer_dense():
    # conv1 (8, 1, 3, 3) would need density 1.04: it is kept dense and the others pay for it
    shapes = {"conv1": (8, 1, 3, 3), "conv2": (64, 32, 3, 3), "fc": (10, 1024)}
    result = layer_sparsities(shapes, 0.8, "erdos_renyi_kernel")
    sizes = {n: int(np.prod(s)) for n, s in shapes.items()}
    assert result["conv1"] == 0.0
    raw = {n: sum(shapes[n]) / sizes[n] for n in ("conv2", "fc")}
    assert (1 - result["conv2"]) / (1 - result["fc"]) == pytest.approx(raw["conv2"] / raw["fc"])
    kept = sum((1 - result[n]) * sizes[n] for n in shapes)
    assert kept == pytest.approx(0.2 * sum(sizes.values()))


def test_a_layer_too_small_for_its_share_is_named():
    with pytest.raises(ConfigError) as error:
        check_layer_share("head.weight", 10, 0.96)
    assert "'head.weight' has 10 weights: at sparsity 0.9600 it keeps none" in str(error.value)
    check_layer_share("head.weight", 10, 0.9)  # keeps one


def test_drop_and_grow_drops_smallest_active_and_grows_highest_inactive():
    mask = np.array([True, True, True, False, False, False])
    weights = np.array([0.5, -0.1, 2.0, 9.0, 9.0, 9.0])  # inactive weights are ignored for dropping
    grads = np.array([0.05, 0.3, 9.0, 0.2, 0.7, 0.1])
    new, grown = drop_and_grow(mask, np.abs(weights), grads, 2)
    # -0.1 and 0.5 dropped; among the inactive (the just-dropped included) 0.7 and 0.3 are the largest gradients
    assert new.tolist() == [False, True, True, False, True, False]
    assert grown.tolist() == [False, True, False, False, True, False]
    assert new.sum() == mask.sum()


def test_regrow_keeps_each_layers_nonzeros_and_drops_exactly_the_smallest_active_magnitudes():
    rng = np.random.default_rng(0)
    masks = {"a": rng.random((16, 8)) < 0.3, "b": rng.random((4, 32)) < 0.2}
    weights = {n: rng.standard_normal(m.shape) for n, m in masks.items()}
    grads = {n: np.zeros(m.shape) for n, m in masks.items()}  # growth goes to the lowest index: checkable
    updates = regrow(masks, weights, grads, 0.25)
    for name, mask in masks.items():
        update = updates[name]
        assert update.nonzeros == mask.sum()
        count = round(0.25 * mask.sum())
        active = np.flatnonzero(mask)
        smallest = set(active[np.argsort(np.abs(weights[name]).reshape(-1)[active], kind="stable")[:count]].tolist())
        dropped = set(np.flatnonzero(mask & ~update.mask).tolist()) | set(np.flatnonzero(mask & update.regrown_mask).tolist())
        assert dropped == smallest
        assert update.dropped == update.regrown == count


def test_rigl_regrows_exactly_the_top_gradient_inactive_positions():
    mask = np.zeros((4, 5), dtype=bool)
    mask[0, :] = True  # 5 active
    weights = np.zeros((4, 5))
    weights[0] = [0.9, 0.1, 0.8, 0.7, 0.6]
    grad = np.arange(20, dtype=float).reshape(4, 5) / 20  # largest gradients at the end
    update = regrow({"w": mask}, {"w": weights}, {"w": grad}, 0.4)["w"]  # moves round(0.4 * 5) = 2
    assert np.flatnonzero(mask & ~update.mask).tolist() == [1, 4]  # |w| 0.1 and 0.6
    assert np.flatnonzero(update.regrown_mask).tolist() == [18, 19]


def test_nm_regrowth_refills_every_group_it_drops_from():
    rng = np.random.default_rng(1)
    weights = rng.standard_normal((6, 8))
    from prunekit.masks import nm_mask

    mask = nm_mask(np.abs(weights), 2, 4, axis=1)
    update = regrow({"w": mask}, {"w": weights}, {"w": rng.random((6, 8))}, 0.5, constraint=Constraint(nm=(2, 4, 1)))["w"]
    assert (update.mask.reshape(6, 2, 4).sum(axis=2) == 2).all()
    assert update.dropped == update.regrown == 12
    assert not (update.mask == mask).all()


def test_block_regrowth_moves_whole_blocks():
    rng = np.random.default_rng(2)
    weights = rng.standard_normal((4, 8))
    mask = np.zeros((4, 8), dtype=bool)
    mask[:2, :4] = True  # two active (1, 4) blocks of eight
    update = regrow({"w": mask}, {"w": weights}, {"w": rng.random((4, 8))}, 0.5, constraint=Constraint(block=(1, 4)))["w"]
    blocks = update.mask.reshape(4, 2, 4)
    assert ((blocks.all(axis=2)) | (~blocks.any(axis=2))).all()  # every block all-on or all-off
    assert update.mask.sum() == 8 and update.regrown == 4


def test_pooled_regrowth_keeps_the_total_and_lets_layers_trade():
    masks = {"a": np.array([True, True, False, False]), "b": np.array([True, True, False, False])}
    weights = {"a": np.array([0.1, 0.2, 0.0, 0.0]), "b": np.array([5.0, 6.0, 0.0, 0.0])}
    grads = {"a": np.zeros(4), "b": np.array([0.0, 0.0, 3.0, 4.0])}
    updates = regrow(masks, weights, grads, 0.5, pooled=True)
    assert updates["a"].mask.tolist() == [False, False, False, False]
    assert updates["b"].mask.tolist() == [True, True, True, True]


def test_a_dense_tensor_is_left_as_it_is():
    update = regrow({"w": np.ones(4, bool)}, {"w": np.ones(4)}, {"w": np.ones(4)}, 0.5)["w"]
    assert update.mask.all() and update.dropped == update.regrown == 0


def test_set_scores_repeat_per_seed_step_and_name():
    assert np.array_equal(random_scores(0, 10, "w", (3, 3)), random_scores(0, 10, "w", (3, 3)))
    assert not np.array_equal(random_scores(0, 10, "w", (3, 3)), random_scores(0, 20, "w", (3, 3)))


def test_turnover_is_the_fraction_of_initially_active_connections_now_inactive():
    initial = {"a": np.array([True, True, False, False]), "b": np.array([True, False])}
    current = {"a": np.array([True, False, True, False]), "b": np.array([False, True])}
    assert turnover(initial, current) == pytest.approx(2 / 3)


def test_turnover_plot_renders_png_and_svg_and_writes_both_files(tmp_path):
    from prunekit.report.dynamic import plot_turnover

    history = [{"step": s, "turnover": t, "regrown": {"a": n}} for s, t, n in [(10, 0.1, 30), (20, 0.18, 20), (30, 0.2, 5)]]
    figure = plot_turnover(history, stem=tmp_path / "turnover")
    assert figure.png.startswith(b"\x89PNG") and b"<svg" in figure.svg
    assert [p.name for p in figure.paths] == ["turnover.png", "turnover.svg"]
    assert (tmp_path / "turnover.png").read_bytes() == figure.png
    with pytest.raises(ConfigError, match="at least one update"):
        plot_turnover([])
    with pytest.raises(ConfigError, match=r"history\[0\] has no \['turnover'\]"):
        plot_turnover([{"step": 1, "regrown": {}}])
