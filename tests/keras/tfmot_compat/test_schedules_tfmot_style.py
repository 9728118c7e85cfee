"""Schedules as TF MOT has them: tensor steps, custom subclasses overriding __call__, end_step == begin_step."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import prunekit
import prunekit.keras as pk


class PruneAtEvenSteps(pk.PruningSchedule):
    """Written as a tfmot user writes one: __call__ and get_config, tensors out."""

    def __init__(self, sparsity):
        self._validate_sparsity(sparsity, "sparsity")
        self.sparsity = sparsity
        self.final_sparsity = sparsity

    def __call__(self, step):
        return self._should_prune_in_step(step, 0, -1, 2), tf.constant(self.sparsity, dtype=tf.float32)

    def get_config(self):
        return {"class_name": self.__class__.__name__, "config": {"sparsity": self.sparsity}}


def _dense_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((10,)), keras.layers.Dense(10, name="fc")])


def _train(model: keras.Model, batches: int, callbacks) -> None:
    model.compile("sgd", "mse", run_eagerly=True)
    x = np.random.default_rng(0).normal(size=(batches, 10)).astype("float32")
    model.fit(x, x, batch_size=1, epochs=1, verbose=0, shuffle=False, callbacks=callbacks)


def test_a_tfmot_style_custom_schedule_prunes_at_its_steps():
    model = pk.prune_low_magnitude(_dense_model(), pruning_schedule=PruneAtEvenSteps(0.3))
    seen = []
    zeros = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: seen.append(int((model.get_layer("fc").kernel.numpy() == 0).sum()))
    )
    _train(model, 3, [pk.UpdatePruningStep(), zeros])
    assert seen == [0, 30, 30]  # steps 1, 2 (prunes to 30 of 100), 3


def test_a_custom_schedule_answers_should_prune_sparsity_at_and_final_sparsity_from_its_call():
    schedule = PruneAtEvenSteps(0.25)
    assert (schedule.should_prune(4), schedule.should_prune(5)) == (True, False)
    assert schedule.sparsity_at(5) == 0.25 and schedule.final_sparsity == 0.25
    assert prunekit.schedules.schedule_value(schedule, 6) == (True, 0.25)


def test_a_custom_schedule_without_call_or_get_config_is_not_usable():
    class NoCall(pk.PruningSchedule):
        def get_config(self):
            return {"class_name": "NoCall", "config": {}}

    with pytest.raises(NotImplementedError, match="__call__"):
        NoCall()(3)


@pytest.mark.parametrize("step", [tf.Variable(20), tf.constant(20, tf.int64), tf.Variable(20, dtype=tf.int64)])
def test_tensor_steps_give_tensors_equal_to_the_integer_results(step):
    schedule = pk.PolynomialDecay(0.1, 0.9, 10, 30, power=2, frequency=5)
    prune, sparsity = schedule(step)
    assert isinstance(prune, tf.Tensor) and isinstance(sparsity, tf.Tensor) and sparsity.dtype == tf.float32
    assert bool(prune) is True
    assert float(sparsity) == pytest.approx(schedule(20)[1]) == pytest.approx(0.9 + (0.1 - 0.9) * 0.5**2)


def test_tensor_steps_work_inside_a_tf_function():
    schedule = pk.ConstantSparsity(0.6, begin_step=10, end_step=40, frequency=10)
    call = tf.function(lambda step: schedule(step))
    results = [(bool(p), round(float(s), 6)) for p, s in (call(tf.constant(v)) for v in (5, 20, 25, 50))]
    assert results == [(False, 0.6), (True, 0.6), (False, 0.6), (False, 0.6)]


def test_the_framework_free_schedules_read_0d_integer_arrays_as_steps():
    assert prunekit.ConstantSparsity(0.5, 0, frequency=4)(np.array(8)) == (True, 0.5)
    with pytest.raises(prunekit.ConfigError, match="integer"):
        prunekit.ConstantSparsity(0.5, 0)(np.array(1.5))


def test_polynomial_decay_with_end_step_equal_to_begin_step_prunes_once_to_the_final_sparsity():
    schedule = pk.PolynomialDecay(0.5, 0.8, begin_step=3, end_step=3, frequency=1)
    assert [schedule(step) for step in (2, 3, 4)] == [(False, 0.5), (True, 0.8), (False, 0.8)]
    model = pk.prune_low_magnitude(_dense_model(), pruning_schedule=schedule)
    _train(model, 3, [pk.UpdatePruningStep()])
    assert int((model.get_layer("fc").kernel.numpy() == 0).sum()) == 80


def test_keras_schedules_equal_the_shared_ones_with_the_same_config():
    assert pk.ConstantSparsity(0.5, 1) == prunekit.ConstantSparsity(0.5, 1)
    assert isinstance(pk.PolynomialDecay(0.0, 0.5, 0, 10, frequency=10), prunekit.PolynomialDecay)
