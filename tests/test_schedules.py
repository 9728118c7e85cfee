"""Schedules: values at chosen steps equal hand-computed numbers; bad arguments are refused."""

import json

import pytest

from prunekit import ConfigError, ConstantSparsity, IterativeSparsity, PolynomialDecay, schedule_from_config


@pytest.mark.parametrize(
    "step, expected",
    [(100, 0.1), (350, 0.5625), (600, 0.8), (1100, 0.9), (5000, 0.9), (0, 0.1)],
)
def test_polynomial_decay_values_match_hand_computation(step, expected):
    # s(t) = 0.9 + (0.1 - 0.9) * (1 - p)^3 with p = (t - 100) / 1000 clipped to [0, 1]
    schedule = PolynomialDecay(0.1, 0.9, begin_step=100, end_step=1100, power=3, frequency=100)
    assert schedule.sparsity_at(step) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("step, expected", [(0, False), (100, True), (150, False), (600, True), (1100, True), (1200, False)])
def test_polynomial_decay_prunes_only_on_frequency_grid_inside_range(step, expected):
    schedule = PolynomialDecay(0.0, 0.9, begin_step=100, end_step=1100, frequency=100)
    assert schedule(step)[0] is expected


def test_polynomial_decay_reaches_final_sparsity_at_end_step():
    schedule = PolynomialDecay(0.0, 0.75, begin_step=0, end_step=300, frequency=100, power=2)
    assert schedule(300) == (True, 0.75)


def test_polynomial_decay_warns_when_end_step_is_off_the_grid():
    with pytest.warns(UserWarning, match="last pruning happens at step 200"):
        PolynomialDecay(0.0, 0.8, begin_step=0, end_step=250, frequency=100)


@pytest.mark.parametrize("step, expected", [(9, False), (10, True), (30, True), (40, False), (50, True), (70, False)])
def test_constant_sparsity_prunes_every_frequency_steps_until_end(step, expected):
    schedule = ConstantSparsity(0.5, begin_step=10, end_step=50, frequency=20)
    assert schedule(step) == (expected, 0.5)


def test_constant_sparsity_without_end_prunes_forever():
    assert ConstantSparsity(0.3, begin_step=0, end_step=-1, frequency=7)(7 * 10**6) == (True, 0.3)


def test_zero_sparsity_is_a_valid_noop_target():
    assert ConstantSparsity(0.0)(0) == (True, 0.0)


def test_iterative_sparsity_prunes_at_milestones_and_holds_between():
    schedule = IterativeSparsity([(0, 0.5), (300, 0.75), (600, 0.9)])
    assert [schedule(s) for s in (0, 1, 299, 300, 599, 600, 10**6)] == [
        (True, 0.5),
        (False, 0.5),
        (False, 0.5),
        (True, 0.75),
        (False, 0.75),
        (True, 0.9),
        (False, 0.9),
    ]


def test_iterative_sparsity_is_zero_before_first_milestone():
    assert IterativeSparsity([(100, 0.5)])(50) == (False, 0.0)


@pytest.mark.parametrize(
    "schedule",
    [
        ConstantSparsity(0.5, begin_step=3, end_step=90, frequency=4),
        PolynomialDecay(0.1, 0.8, begin_step=10, end_step=110, power=2.5, frequency=20),
        IterativeSparsity([(0, 0.25), (10, 0.5)]),
    ],
)
def test_config_round_trips_through_json(schedule):
    rebuilt = schedule_from_config(json.loads(json.dumps(schedule.get_config())))
    assert rebuilt == schedule
    assert type(rebuilt) is type(schedule)
    assert [rebuilt(s) for s in range(0, 120, 5)] == [schedule(s) for s in range(0, 120, 5)]


def test_from_config_accepts_inner_config():
    config = PolynomialDecay(0.0, 0.5, 0, 100, frequency=10).get_config()["config"]
    assert PolynomialDecay.from_config(config).sparsity_at(100) == 0.5


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: ConstantSparsity(1.0), "target_sparsity should be in \\[0, 1\\)"),
        (lambda: ConstantSparsity(-0.1), "target_sparsity should be in \\[0, 1\\)"),
        (lambda: ConstantSparsity(0.5, begin_step=-1), "begin_step should be >= 0"),
        (lambda: ConstantSparsity(0.5, begin_step=10, end_step=5), "end_step \\(5\\) should be >= begin_step \\(10\\)"),
        (lambda: ConstantSparsity(0.5, frequency=0), "frequency should be an integer >= 1"),
        (lambda: PolynomialDecay(0.0, 1.2, 0, 100), "final_sparsity should be in \\[0, 1\\)"),
        (lambda: PolynomialDecay(0.0, 0.5, 100, 99), "end_step \\(99\\) should be >= begin_step \\(100\\)"),
        (lambda: PolynomialDecay(0.0, 0.5, 0, 100, power=0), "power should be a number > 0"),
        (lambda: PolynomialDecay(0.0, 0.5, 0, 100, frequency=1.5), "frequency should be an integer"),
        (lambda: IterativeSparsity([]), "at least one"),
        (lambda: IterativeSparsity([(10, 0.5), (5, 0.6)]), "steps should increase"),
        (lambda: IterativeSparsity([(0, 0.6), (5, 0.5)]), "should not decrease"),
        (lambda: schedule_from_config({"class_name": "Nope", "config": {}}), "unknown schedule class_name 'Nope'"),
    ],
)
def test_bad_arguments_raise_config_error_naming_the_field(build, message):
    with pytest.raises(ConfigError, match=message):
        build()


def test_config_error_is_a_value_error():
    with pytest.raises(ValueError):
        ConstantSparsity(2.0)
