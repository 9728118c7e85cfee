"""UpdatePruningStep's checks and PruningSummaries' logs (JSON lines and TensorBoard events, read back with TF's reader)."""

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


def _scalars(directory):
    """(tag, step) -> value of every scalar in the event files under ``directory``, read back as TensorBoard does."""
    values = {}
    for event_file in sorted(directory.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name != "scalars":
                    continue  # TensorBoard's model graph
                values[(value.tag, event.step)] = float(tf.make_ndarray(value.tensor))
    return values


def test_pruning_summaries_logs_each_weights_sparsity_at_epoch_starts_and_the_end_like_tfmot(tmp_path):
    model = compile_classifier(pk.prune_low_magnitude(tiny_cnn(), pruning_schedule=SCHEDULE), eager=True)
    summaries = pk.PruningSummaries(log_dir=tmp_path)
    _fit(model, [pk.UpdatePruningStep(), summaries])
    records = [json.loads(line) for line in (tmp_path / "pruning_summaries.jsonl").read_text().splitlines()]
    assert records == summaries.records
    # TF MOT logs at each epoch start (step 0, then 4: the first batch is step 1); prunekit adds the end
    assert [(r["epoch"], r["step"]) for r in records] == [(0, 0), (1, 4), (None, 8)]
    assert set(records[0]["sparsity"].values()) == {0.0}
    assert records[1]["sparsity"]["fc1/kernel"] == 0.5  # end_step 4 is the 4th batch: final sparsity reached
    assert records[2]["sparsity"] == {
        "conv1/kernel": pytest.approx(18 / 36),
        "conv2/kernel": 0.5,
        "fc1/kernel": 0.5,
        "fc2/kernel": 0.5,
    }
    assert records[2]["target_sparsity"] == {"conv1": 0.5, "conv2": 0.5, "fc1": 0.5, "fc2": 0.5}
    scalars = _scalars(tmp_path / "metrics")
    for record in records:
        for path, value in record["sparsity"].items():
            assert scalars[(f"{path}/sparsity", record["step"])] == pytest.approx(value)
    # it is a TensorBoard: the training metrics are in train/ as TensorBoard writes them
    train = _scalars(tmp_path / "train")
    assert sorted(tag for tag, step in train if step == 1) == ["epoch_accuracy", "epoch_learning_rate", "epoch_loss"]


def test_pruning_summaries_takes_tensorboards_arguments_and_logs_every_update_freq_batches(tmp_path):
    model = compile_classifier(pk.prune_low_magnitude(tiny_cnn(), pruning_schedule=SCHEDULE), eager=True)
    callback = pk.PruningSummaries(log_dir=tmp_path, update_freq=3, profile_batch=0, write_graph=False)
    assert isinstance(callback, keras.callbacks.TensorBoard)
    _fit(model, [pk.UpdatePruningStep(), callback], epochs=1)
    values = _scalars(tmp_path / "metrics")
    assert values[("fc1/kernel/sparsity", 3)] == pytest.approx(round(SCHEDULE.sparsity_at(2) * 2048) / 2048)
    assert values[("fc2/target_sparsity", 3)] == pytest.approx(SCHEDULE.sparsity_at(3))
    assert values[("fc1/kernel/sparsity", 4)] == 0.5  # the end of training
    # TensorBoard's batch-level metrics every 3 batches (update_freq), next to the pruning scalars
    assert sorted(step for tag, step in _scalars(tmp_path / "train") if tag == "batch_loss") == [3]


def test_pruning_summaries_driven_from_a_custom_loop_as_tfmots_guide_writes_events(tmp_path):
    model = pk.prune_low_magnitude(tiny_cnn(), pruning_schedule=SCHEDULE)
    x, y = random_digits(16)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    optimizer = keras.optimizers.SGD(0.01)
    step_callback = pk.UpdatePruningStep()
    step_callback.set_model(model)
    log_callback = pk.PruningSummaries(log_dir=str(tmp_path))
    log_callback.set_model(model)
    step_callback.on_train_begin()
    for _ in range(3):
        log_callback.on_epoch_begin(epoch=-1)
        for start in range(0, 16, 8):
            step_callback.on_train_batch_begin(batch=-1)
            with tf.GradientTape() as tape:
                loss = loss_fn(y[start : start + 8], model(x[start : start + 8], training=True))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
        step_callback.on_epoch_end(batch=-1)
    values = _scalars(tmp_path / "metrics")
    assert sorted(step for tag, step in values if tag == "fc1/kernel/sparsity") == [0, 2, 4]
    assert values[("fc1/kernel/sparsity", 2)] == pytest.approx(round(SCHEDULE.sparsity_at(2) * 2048) / 2048)
    assert values[("fc1/kernel/sparsity", 4)] == 0.5
    assert values[("conv1/target_sparsity", 4)] == 0.5


@pytest.mark.parametrize("log_dir", ["", None, 3])
def test_pruning_summaries_refuses_an_empty_or_non_path_log_dir_with_a_value_error(log_dir):
    with pytest.raises(ValueError, match="log_dir"):
        pk.PruningSummaries(log_dir=log_dir)


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
        pk.PruningSummaries(tmp_path, update_freq="sometimes")


def test_pruning_summaries_asks_for_tensorboard_only_for_what_needs_it(tmp_path):
    import importlib.util

    if importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed: histograms are available")
    with pytest.raises(ConfigError, match=r"histogram_freq=1.*pip install tensorboard"):
        pk.PruningSummaries(tmp_path, histogram_freq=1)
    assert pk.PruningSummaries(tmp_path, profile_batch=0, write_graph=True).update_freq == "epoch"
