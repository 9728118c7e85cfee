"""A Keras schedule that never reaches its target warns at the end of fit and in strip_pruning, naming the layers."""

import warnings

import pytest

from prunekit.errors import ConfigError, SparsityWarning
from prunekit.schedules import PolynomialDecay
from tests.keras.helpers import compile_classifier, keras, pk, random_digits


def tiny_run(schedule, batches=4):
    """A small Dense model pruned with ``schedule`` and a ``fit`` of ``batches`` batches (one epoch)."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10, name="head")])
    model = compile_classifier(pk.prune_low_magnitude(model, pruning_schedule=schedule), eager=True)
    x, y = random_digits(16 * batches)
    return model, lambda: model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[pk.UpdatePruningStep()])


def test_a_run_stopped_before_end_step_warns_once_at_the_end_of_fit_naming_layer_and_steps():
    model, train = tiny_run(PolynomialDecay(0.5, 0.8, 0, end_step=1000, frequency=1), batches=4)
    with pytest.warns(SparsityWarning) as caught:
        train()
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith("UpdatePruningStep (end of training), layer(s) 'head': sparsity is ")
    assert "after 4 pruner step(s)" in message and "targets 80.0%" in message
    assert "end_step=1000 but training stopped at step 4" in message
    assert "steps_per_epoch * epochs" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pk.strip_pruning(model)  # warned once per layer


def test_strip_pruning_of_a_short_run_warns_naming_the_layer():
    model, _ = tiny_run(PolynomialDecay(0.0, 0.6, begin_step=10, end_step=20, frequency=1))
    step = pk.UpdatePruningStep()  # a custom loop that never calls on_train_end: strip_pruning is the last chance
    step.set_model(model)
    step.on_train_begin()
    for _ in range(2):
        step.on_train_batch_begin(batch=-1)
    with pytest.warns(SparsityWarning) as caught:
        stripped = pk.strip_pruning(model)
    message = str(caught[0].message)
    assert len(caught) == 1
    assert message.startswith("strip_pruning, layer(s) 'head': sparsity is 0.0% after 2 pruner step(s)")
    assert "begin_step=10 was never reached" in message
    assert float((stripped.get_layer("head").kernel.numpy() == 0).mean()) == 0.0


def test_a_schedule_that_reaches_its_target_is_silent():
    model, train = tiny_run(PolynomialDecay(0.0, 0.75, 0, end_step=4, frequency=1), batches=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train()
        stripped = pk.strip_pruning(model)
    assert int((stripped.get_layer("head").kernel.numpy() == 0).sum()) == 480  # 75 % of 64 * 10


def test_check_target_false_leaves_the_warning_to_strip_pruning():
    model, _ = tiny_run(PolynomialDecay(0.5, 0.8, 0, end_step=1000, frequency=1))
    x, y = random_digits(32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(2):  # a run of several short fits
            model.fit(x, y, batch_size=16, verbose=0, callbacks=[pk.UpdatePruningStep(check_target=False)])
    with pytest.warns(SparsityWarning, match=r"^strip_pruning, layer\(s\) 'head': .* after 4 pruner step\(s\)"):
        pk.strip_pruning(model)


def test_check_target_must_be_a_bool():
    with pytest.raises(ConfigError, match="check_target should be True or False, got 'no'"):
        pk.UpdatePruningStep(check_target="no")
