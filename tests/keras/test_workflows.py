"""The pruning-aware training modes on the digits CNN: accuracy after pruning, exact sparsity."""

import pytest

import prunekit.keras as pk
from prunekit import ConfigError, PolynomialDecay
from tests.assertions import assert_sparsity
from tests.keras.helpers import accuracy

KERNELS = ("conv1", "conv2", "fc1", "fc2")


def test_dense_digits_cnn_learns_the_task(dense_cnn, digits):
    assert accuracy(dense_cnn, digits.x_test, digits.y_test) >= 0.96


def test_gradual_90_percent_with_fine_tuning_is_within_1_5_points_of_dense(dense_cnn, pruned_90, digits):
    dense = accuracy(dense_cnn, digits.x_test, digits.y_test)
    pruned = accuracy(pruned_90.model, digits.x_test, digits.y_test)
    print(f"dense {dense:.4f}, 90% pruned {pruned:.4f}")
    assert pruned >= dense - 0.015


def test_gradual_run_is_stripped_and_exactly_90_percent_sparse(pruned_90):
    assert isinstance(pruned_90.schedule, PolynomialDecay)
    assert pruned_90.sparsity == pytest.approx(0.9, abs=1e-5)
    assert pk.pruned_layers(pruned_90.model) == []
    for name in KERNELS:
        assert_sparsity(pruned_90.model.get_layer(name).kernel.numpy(), 0.9, name)


def test_one_shot_prunes_at_the_first_step_and_fine_tunes(dense_cnn, digits):
    run = pk.prune_one_shot(dense_cnn, digits.x_train, digits.y_train, 0.5, finetune_epochs=1, lr=5e-4, batch_size=64)
    for name in KERNELS:
        assert_sparsity(run.model.get_layer(name).kernel.numpy(), 0.5, name)
    assert accuracy(run.model, digits.x_test, digits.y_test) >= accuracy(dense_cnn, digits.x_test, digits.y_test) - 0.02


def test_iterative_reaches_its_target_in_rounds(dense_cnn, digits):
    run = pk.prune_iteratively(dense_cnn, digits.x_train, digits.y_train, 0.75, rounds=2, epochs_per_round=1, batch_size=128)
    assert [round(s, 6) for _, s in run.schedule.milestones] == [0.5, 0.75]
    assert [step for step, _ in run.schedule.milestones] == [0, 10]
    for name in KERNELS:
        assert_sparsity(run.model.get_layer(name).kernel.numpy(), 0.75, name)


def test_gradual_schedule_ends_on_a_pruning_step_inside_training():
    schedule = pk.gradual_schedule(0.8, epochs=3, steps_per_epoch=10, frequency=4)
    assert schedule.end_step == 20 and schedule.should_prune(20)


def test_gradual_schedule_refuses_training_too_short_to_prune():
    with pytest.raises(ConfigError, match="leave no room for gradual pruning"):
        pk.gradual_schedule(0.5, epochs=1, steps_per_epoch=10, frequency=100)
