"""The tfmot-named Keras API numbers training steps like TF MOT: the first batch is step 1.

TFMOT_RESULTS are tfmot 0.8.1's results (tf-keras 2.x, recorded side by side in issue #21) for a
Dense layer trained ``batches`` batches with ``UpdatePruningStep``; prunekit must give the same.
"""

import keras
import numpy as np
import pytest

import prunekit.keras as pk

# (schedule, batches, tfmot's kernel sparsity after training)
TFMOT_RESULTS = [
    (pk.ConstantSparsity(0.5, begin_step=0, frequency=100), 50, 0.0),
    (pk.PolynomialDecay(0.5, 0.8, 0, end_step=20, frequency=10), 20, 0.8),
    (pk.ConstantSparsity(0.5, begin_step=5, frequency=5), 5, 0.5),
]


def _dense_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((10,)), keras.layers.Dense(10, name="fc")])


def _train(model: keras.Model, batches: int, callback: keras.callbacks.Callback) -> None:
    model.compile("sgd", "mse", run_eagerly=True)
    x = np.random.default_rng(0).normal(size=(batches, 10)).astype("float32")
    model.fit(x, x, batch_size=1, epochs=1, verbose=0, shuffle=False, callbacks=[callback])


@pytest.mark.parametrize(("schedule", "batches", "expected"), TFMOT_RESULTS, ids=["constant-50", "poly-20", "constant-5"])
def test_sparsity_after_n_batches_equals_tfmots(schedule, batches, expected):
    model = pk.prune_low_magnitude(_dense_model(), pruning_schedule=schedule)
    _train(model, batches, pk.UpdatePruningStep())
    kernel = model.get_layer("fc").kernel.numpy()
    assert float((kernel == 0).mean()) == pytest.approx(expected)


def test_the_first_batch_is_step_one_and_the_step_after_n_batches_is_n():
    model = pk.prune_low_magnitude(_dense_model(), pruning_schedule=pk.ConstantSparsity(0.5, 1, frequency=1))
    callback = pk.UpdatePruningStep()
    steps = []
    recorder = keras.callbacks.LambdaCallback(on_train_batch_begin=lambda batch, logs: steps.append(callback.step))
    model.compile("sgd", "mse", run_eagerly=True)
    x = np.ones((3, 10), "float32")
    model.fit(x, x, batch_size=1, verbose=0, shuffle=False, callbacks=[callback, recorder])
    assert steps == [1, 2, 3]


def test_first_step_zero_keeps_prunekit_torch_numbering():
    # ConstantSparsity(0.5, 0, 0, 1) prunes only at step 0: never under TF MOT's numbering, at batch 1 with first_step=0
    tfmot_style = pk.prune_low_magnitude(_dense_model(), pruning_schedule=pk.ConstantSparsity(0.5, 0, 0, 1))
    _train(tfmot_style, 2, pk.UpdatePruningStep())
    torch_style = pk.prune_low_magnitude(_dense_model(), pruning_schedule=pk.ConstantSparsity(0.5, 0, 0, 1))
    _train(torch_style, 2, pk.UpdatePruningStep(first_step=0))
    assert float((tfmot_style.get_layer("fc").kernel.numpy() == 0).mean()) == 0.0
    assert float((torch_style.get_layer("fc").kernel.numpy() == 0).mean()) == 0.5


def test_a_restored_model_continues_from_its_saved_step(tmp_path):
    schedule = pk.ConstantSparsity(0.5, begin_step=4, end_step=4, frequency=1)
    model = pk.prune_low_magnitude(_dense_model(), pruning_schedule=schedule)
    _train(model, 3, pk.UpdatePruningStep())  # steps 1..3: not yet
    assert float((model.get_layer("fc").kernel.numpy() == 0).mean()) == 0.0
    model.save(tmp_path / "ckpt.keras")
    restored = pk.load_model(tmp_path / "ckpt.keras")
    _train(restored, 1, pk.UpdatePruningStep())  # step 4
    assert float((restored.get_layer("fc").kernel.numpy() == 0).mean()) == 0.5
