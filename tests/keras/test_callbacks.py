"""UpdatePruningStep's checks and PruningSummaries' logs (JSON lines and TensorBoard events)."""

import json

import keras
import pytest
import tensorflow as tf

import prunekit.keras as pk
from prunekit import ConfigError, PolynomialDecay
from tests.keras.helpers import compile_classifier, random_digits, tiny_cnn

SCHEDULE = PolynomialDecay(0.0, 0.5, begin_step=0, end_step=4, frequency=2)


def _fit(model, callbacks, epochs=2):
    x, y = random_digits(32)
    model.fit(x, y, epochs=epochs, batch_size=8, verbose=0, callbacks=callbacks, shuffle=False)


def test_pruning_summaries_logs_each_weights_sparsity_once_per_epoch(tmp_path):
    model = compile_classifier(pk.prune_low_magnitude(tiny_cnn(), pruning_schedule=SCHEDULE), eager=True)
    summaries = pk.PruningSummaries(log_dir=tmp_path, tensorboard=False)
    _fit(model, [pk.UpdatePruningStep(), summaries])
    records = [json.loads(line) for line in (tmp_path / "pruning_summaries.jsonl").read_text().splitlines()]
    assert records == summaries.records
    assert [(r["epoch"], r["step"]) for r in records] == [(0, 4), (1, 8)]  # TF MOT: the first batch is step 1
    assert records[0]["sparsity"]["fc1/kernel"] == 0.5  # end_step 4 is the 4th batch: final sparsity reached
    assert records[1]["sparsity"] == {
        "conv1/kernel": pytest.approx(18 / 36),
        "conv2/kernel": 0.5,
        "fc1/kernel": 0.5,
        "fc2/kernel": 0.5,
    }
    assert records[1]["target_sparsity"] == {"conv1": 0.5, "conv2": 0.5, "fc1": 0.5, "fc2": 0.5}


def test_pruning_summaries_writes_tensorboard_scalars_without_tensorboard_installed(tmp_path):
    from tensorflow.core.util import event_pb2

    model = compile_classifier(pk.prune_low_magnitude(tiny_cnn(), pruning_schedule=SCHEDULE), eager=True)
    _fit(model, [pk.UpdatePruningStep(), pk.PruningSummaries(log_dir=tmp_path, update_freq=3)], epochs=1)
    values = {}
    for event_file in tmp_path.glob("events.out.tfevents.*"):
        for record in tf.data.TFRecordDataset(str(event_file)):
            event = event_pb2.Event.FromString(record.numpy())
            for value in event.summary.value:
                values[(value.tag, event.step)] = float(tf.make_ndarray(value.tensor))
    assert values[("fc1/kernel/sparsity", 3)] == pytest.approx(round(SCHEDULE.sparsity_at(2) * 2048) / 2048)
    assert values[("fc2/target_sparsity", 3)] == pytest.approx(SCHEDULE.sparsity_at(3))


def test_update_pruning_step_refuses_steps_per_execution_above_one():
    model = pk.prune_low_magnitude(tiny_cnn(), pruning_schedule=SCHEDULE)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), steps_per_execution=4, run_eagerly=True)
    with pytest.raises(ConfigError, match="steps_per_execution=1"):
        _fit(model, [pk.UpdatePruningStep()])


def test_update_pruning_step_on_an_unpruned_model_is_a_no_op_like_tfmot():
    model = compile_classifier(tiny_cnn(), eager=True)
    callback = pk.UpdatePruningStep()
    _fit(model, [callback])
    assert callback.step == -1
    assert all(float((w.numpy() == 0).mean()) == 0.0 for w in model.trainable_weights if w.path.endswith("kernel"))


def test_pruning_summaries_rejects_a_bad_update_freq(tmp_path):
    with pytest.raises(ConfigError, match="update_freq"):
        pk.PruningSummaries(tmp_path, update_freq="batch")
