"""prunekit.keras against numbers recorded once from real TF MOT 0.8.1 (tf-keras 2.21, TensorFlow 2.21).

``fixtures/tfmot_0_8_1.json`` was written by ``scripts/record_tfmot_fixtures.py`` in a separate
virtualenv with tfmot installed; these tests run the same cases on prunekit.keras (Keras 3) and
assert the same numbers: a 10x10 ``Dense`` kernel trained one batch at a time with
``UpdatePruningStep`` (its mask's sparsity after every batch, the kernel's sparsity and the pruning
step after training), the schedules' ``(should_prune, sparsity)`` at steps 0..25 called with tensor
steps, and the steps at which ``PruningSummaries`` logs in ``fit``. The table in
docs/migrating-from-tfmot.md shows them side by side.
"""

import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import prunekit.keras as pk
from prunekit.keras.unstructured.state import get_pruning

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "tfmot_0_8_1.json").read_text())


def _train(schedule: str, kwargs: dict, batches: int) -> dict:
    """The recorder's ``_train`` on prunekit: same model, data, optimizer and batches."""
    keras.utils.set_random_seed(0)
    model = pk.prune_low_magnitude(
        keras.Sequential([keras.Input((10,)), keras.layers.Dense(10, name="fc")]),
        pruning_schedule=getattr(pk, schedule)(**kwargs),
    )
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse", run_eagerly=True)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(batches, 10)).astype("float32"), rng.normal(size=(batches, 10)).astype("float32")
    per_batch = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            (mask,) = pk.get_masks(model).values()
            per_batch.append(float(1.0 - mask.mean()))

    model.fit(x, y, batch_size=1, epochs=1, verbose=0, shuffle=False, callbacks=[pk.UpdatePruningStep(), Record()])
    kernel = pk.strip_pruning(model).layers[0].kernel.numpy()
    return {
        "sparsity_per_batch": per_batch,
        "final_kernel_sparsity": float((kernel == 0).mean()),
        "final_step": int(get_pruning(model.get_layer("fc")).step.numpy()),
    }


@pytest.mark.parametrize("case", sorted(FIXTURE["training"]))
def test_training_with_update_pruning_step_matches_tfmot(case):
    recorded = FIXTURE["training"][case]
    ours = _train(recorded["schedule"], recorded["kwargs"], recorded["batches"])
    assert ours["final_step"] == recorded["final_step"]
    assert ours["sparsity_per_batch"] == pytest.approx(recorded["sparsity_per_batch"], abs=1e-6)  # tfmot: float32 means
    assert ours["final_kernel_sparsity"] == pytest.approx(recorded["final_kernel_sparsity"], abs=1e-6)


@pytest.mark.parametrize("case", sorted(FIXTURE["schedules"]))
def test_schedules_called_with_tensor_steps_match_tfmot(case):
    recorded = FIXTURE["training"][case]
    schedule = getattr(pk, recorded["schedule"])(**recorded["kwargs"])
    ours = []
    for step in FIXTURE["schedule_steps"]:
        prune, value = schedule(tf.constant(step, tf.int64))
        ours.append([bool(prune.numpy()), round(float(value.numpy()), 6)])
    assert [flag for flag, _ in ours] == [flag for flag, _ in FIXTURE["schedules"][case]]
    assert [value for _, value in ours] == pytest.approx([value for _, value in FIXTURE["schedules"][case]], abs=2e-6)


def test_pruning_summaries_logs_at_the_same_steps_as_tfmot(tmp_path):
    model = pk.prune_low_magnitude(
        keras.Sequential([keras.Input((10,)), keras.layers.Dense(10, name="fc")]),
        pruning_schedule=pk.ConstantSparsity(0.5, 0, frequency=2),
    )
    model.compile(optimizer="sgd", loss="mse", run_eagerly=True)
    x = np.ones((8, 10), "float32")
    summaries = pk.PruningSummaries(tmp_path)
    model.fit(x, x, batch_size=2, epochs=3, verbose=0, callbacks=[pk.UpdatePruningStep(), summaries])
    at_epoch_starts = [record["step"] for record in summaries.records if record["epoch"] is not None]
    assert at_epoch_starts == FIXTURE["pruning_summaries_steps_3_epochs_of_4_batches"]
