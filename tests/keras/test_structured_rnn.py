"""Structured pruning of Keras LSTM/GRU/SimpleRNN (and Bidirectional) hidden units, checked by the oracle: units whose
outgoing weights are zero contribute nothing, so removing them leaves the outputs unchanged."""

import keras
import numpy as np
import pytest

import prunekit.keras as pk
from prunekit import ConfigError
from prunekit.artifacts.litert import interpreter_class
from tests.assertions import assert_same_outputs

L = keras.layers
STEPS, FEATURES, UNITS1, UNITS2, CLASSES = 5, 6, 8, 6, 3
DEAD1, DEAD2 = [1, 4, 6], [0, 3]
CELLS = {
    "lstm": (lambda units, **kw: L.LSTM(units, **kw), 4, 1),
    "gru_reset_after": (lambda units, **kw: L.GRU(units, reset_after=True, **kw), 3, 2),
    "gru_reset_before": (lambda units, **kw: L.GRU(units, reset_after=False, **kw), 3, 1),
    "simple_rnn": (lambda units, **kw: L.SimpleRNN(units, **kw), 1, 1),
}


def stacked(cell: str, return_sequences: bool) -> keras.Model:
    """Input (5, 6) -> RNN(8, sequences) -> RNN(6, return_sequences) -> Dense(3)."""
    make = CELLS[cell][0]
    x = keras.Input((STEPS, FEATURES), name="x")
    h = make(UNITS1, return_sequences=True, name="rnn1")(x)
    h = make(UNITS2, return_sequences=return_sequences, name="rnn2")(h)
    return keras.Model(x, L.Dense(CLASSES, name="out")(h), name=f"stacked_{cell}")


def _zero_rows(weight, rows):
    values = weight.numpy()
    values[rows] = 0
    weight.assign(values)


def silenced(cell: str, return_sequences: bool) -> keras.Model:
    """The stacked model whose DEAD1 units of rnn1 and DEAD2 units of rnn2 reach nothing: their rows of
    their own recurrent_kernel and of the next layer's kernel are zero."""
    keras.utils.set_random_seed(0)
    model = stacked(cell, return_sequences)
    rnn1, rnn2, out = (model.get_layer(name) for name in ("rnn1", "rnn2", "out"))
    _zero_rows(rnn1.cell.recurrent_kernel, DEAD1)
    _zero_rows(rnn2.cell.kernel, DEAD1)
    _zero_rows(rnn2.cell.recurrent_kernel, DEAD2)
    _zero_rows(out.kernel, DEAD2)
    for bias in (rnn1.cell.bias, rnn2.cell.bias):  # random biases, so the silenced units are not idle
        bias.assign(np.random.default_rng(1).normal(size=bias.shape).astype(np.float32))
    return model


def _hand_count(cell: str, fan_in: int, units: int) -> int:
    _, gates, bias_rows = CELLS[cell]
    return gates * (fan_in * units + units * units + bias_rows * units)


def _inputs(seed=0):
    return np.random.default_rng(seed).normal(size=(4, STEPS, FEATURES)).astype(np.float32)


@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("cell", list(CELLS))
def test_oracle_removing_units_that_reach_nothing_keeps_the_outputs(cell, return_sequences, tmp_path):
    model = silenced(cell, return_sequences)
    small = pk.remove_channels(model, channels={"rnn1": DEAD1, "rnn2": DEAD2}).model
    x = _inputs()
    assert_same_outputs(small(x), model(x), atol=1e-5)
    live = pk.remove_channels(model, channels={"rnn1": [0, 2, 3], "rnn2": [1, 2]}).model  # the oracle can tell: live units matter
    assert np.abs(np.asarray(live(x)) - np.asarray(model(x))).max() > 1e-2
    units1, units2 = UNITS1 - len(DEAD1), UNITS2 - len(DEAD2)
    assert (small.get_layer("rnn1").units, small.get_layer("rnn2").units) == (units1, units2)
    assert small.get_layer("rnn1").count_params() == _hand_count(cell, FEATURES, units1)
    assert small.get_layer("rnn2").count_params() == _hand_count(cell, units1, units2)
    assert small.get_layer("out").count_params() == units2 * CLASSES + CLASSES
    if return_sequences:  # one save/reload per cell is enough
        small.save(tmp_path / "small.keras")
        assert_same_outputs(keras.saving.load_model(tmp_path / "small.keras")(x), small(x), atol=1e-6)


def bidirectional(merge_mode: str) -> keras.Model:
    """Input (5, 6) -> Bidirectional(LSTM(8), sequences) -> Bidirectional(GRU(6)) -> Dense(3), both merged by merge_mode."""
    x = keras.Input((STEPS, FEATURES), name="x")
    h = L.Bidirectional(L.LSTM(UNITS1, return_sequences=True), merge_mode=merge_mode, name="bi1")(x)
    h = L.Bidirectional(L.GRU(UNITS2), merge_mode=merge_mode, name="bi2")(h)
    return keras.Model(x, L.Dense(CLASSES, name="out")(h), name=f"bidirectional_{merge_mode}")


def _output_rows(units: list[int], width: int, merge_mode: str) -> list[int]:
    return units + [width + unit for unit in units] if merge_mode == "concat" else units


@pytest.mark.parametrize("merge_mode", ["concat", "sum"])
def test_oracle_bidirectional_loses_each_removed_unit_in_both_directions(merge_mode, tmp_path):
    keras.utils.set_random_seed(0)
    model = bidirectional(merge_mode)
    bi1, bi2 = model.get_layer("bi1"), model.get_layer("bi2")
    for direction in (bi1.forward_layer, bi1.backward_layer):
        _zero_rows(direction.cell.recurrent_kernel, DEAD1)
    for direction in (bi2.forward_layer, bi2.backward_layer):
        _zero_rows(direction.cell.kernel, _output_rows(DEAD1, UNITS1, merge_mode))
        _zero_rows(direction.cell.recurrent_kernel, DEAD2)
    _zero_rows(model.get_layer("out").kernel, _output_rows(DEAD2, UNITS2, merge_mode))
    small = pk.remove_channels(model, channels={"bi1": DEAD1, "bi2": DEAD2}).model
    x = _inputs()
    assert_same_outputs(small(x), model(x), atol=1e-5)
    live = pk.remove_channels(model, channels={"bi1": [0, 2, 3], "bi2": [1, 2]}).model
    assert np.abs(np.asarray(live(x)) - np.asarray(model(x))).max() > 1e-2
    units1, units2 = UNITS1 - len(DEAD1), UNITS2 - len(DEAD2)
    width1 = 2 * units1 if merge_mode == "concat" else units1
    assert [small.get_layer("bi1").backward_layer.units, small.get_layer("bi2").forward_layer.units] == [units1, units2]
    assert small.get_layer("bi1").count_params() == 2 * _hand_count("lstm", FEATURES, units1)
    assert small.get_layer("bi2").count_params() == 2 * _hand_count("gru_reset_after", width1, units2)
    small.save(tmp_path / "small.keras")
    assert_same_outputs(keras.saving.load_model(tmp_path / "small.keras")(x), small(x), atol=1e-6)


def test_unit_columns_of_every_gate_are_kept_in_order():
    model = stacked("lstm", False)
    small = pk.remove_channels(model, channels={"rnn1": [0, 2, 3, 5, 6, 7]}).model  # keeps units 1 and 4
    kernel, recurrent, bias = (w.numpy() for w in model.get_layer("rnn1").weights)
    columns = [1, 4, 9, 12, 17, 20, 25, 28]  # i, f, c, o gates of units 1 and 4
    new_kernel, new_recurrent, new_bias = (w.numpy() for w in small.get_layer("rnn1").weights)
    np.testing.assert_array_equal(new_kernel, kernel[:, columns])
    np.testing.assert_array_equal(new_recurrent, recurrent[[1, 4]][:, columns])
    np.testing.assert_array_equal(new_bias, bias[columns])
    np.testing.assert_array_equal(small.get_layer("rnn2").weights[0].numpy(), model.get_layer("rnn2").weights[0].numpy()[[1, 4]])


def test_channel_groups_rank_each_unit_by_all_its_gate_columns():
    groups = {group.producers: group for group in pk.channel_groups(stacked("gru_reset_after", True))}
    assert (groups[("rnn1",)].size, groups[("rnn1",)].filters["rnn1"].shape) == (UNITS1, (UNITS1, 3 * (FEATURES + UNITS1)))
    assert groups[("rnn2",)].size == UNITS2
    assert groups[("out",)].locked_reason == "it reaches the model output 'out'"


def test_a_bidirectional_group_joins_both_directions_and_merge_mode_none_locks():
    groups = {group.producers: group for group in pk.channel_groups(bidirectional("concat"))}
    assert (groups[("bi1",)].size, groups[("bi1",)].filters["bi1"].shape) == (UNITS1, (UNITS1, 2 * 4 * (FEATURES + UNITS1)))
    x = keras.Input((STEPS, FEATURES), name="x")
    forward, backward = L.Bidirectional(L.SimpleRNN(4), merge_mode=None, name="bi")(x)
    model = keras.Model(x, L.Add(name="add")([forward, backward]))
    with pytest.raises(ConfigError, match="merge_mode=None returns two tensors"):
        pk.remove_channels(model, channels={"bi": [0]})


def test_return_state_and_stateful_layers_lock_their_units():
    x = keras.Input((STEPS, FEATURES), batch_size=2, name="x")
    sequence, state_h, _ = L.LSTM(UNITS1, return_sequences=True, return_state=True, name="rnn1")(x)
    h = L.GRU(UNITS2, stateful=True, name="rnn2")(L.Dense(4, name="proj")(sequence))
    model = keras.Model(x, [L.Dense(CLASSES, name="out")(h), state_h])
    with pytest.raises(ConfigError, match="whose states are model tensors .*return_state=False"):
        pk.remove_channels(model, channels={"rnn1": [0]})
    with pytest.raises(ConfigError, match="keeps its states between batches .*stateful=False"):
        pk.remove_channels(model, channels={"rnn2": [0]})
    with pytest.raises(ConfigError, match="channel 0 of layer 'proj' cannot be removed: it feeds GRU layer 'rnn2'"):
        pk.remove_channels(model, channels={"proj": [0]})


def masked_classifier() -> keras.Model:
    """Token ids (7,) -> Embedding(30, 16, mask_zero) -> LSTM(12, unrolled) -> Dense(3)."""
    keras.utils.set_random_seed(0)
    tokens = keras.Input((7,), dtype="int32", name="tokens")
    h = L.Embedding(30, 16, mask_zero=True, name="embedding")(tokens)
    h = L.LSTM(12, unroll=True, name="lstm")(h)
    return keras.Model(tokens, L.Dense(CLASSES, name="out")(h), name="classifier")


def _tokens():
    ids = np.random.default_rng(0).integers(1, 30, size=(4, 7)).astype(np.int32)
    ids[:, 5:] = 0  # padding the mask skips
    return ids


def _tflite_outputs(flatbuffer: bytes, ids: np.ndarray) -> np.ndarray:
    interpreter = interpreter_class()(model_content=flatbuffer)
    (detail,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(detail["index"], list(ids.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(detail["index"], ids)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def test_prune_half_of_a_masked_embedding_lstm_classifier_and_convert_it_to_tflite():
    model = masked_classifier()
    small = pk.prune_channels(model, ratio=0.5).model
    assert (small.get_layer("embedding").output_dim, small.get_layer("lstm").units) == (8, 6)
    assert (model.count_params(), small.count_params()) == (1911, 30 * 8 + 4 * (8 * 6 + 6 * 6 + 6) + 6 * CLASSES + CLASSES)
    ids = _tokens()
    outputs = small(ids)
    assert_same_outputs(_tflite_outputs(pk.convert_to_tflite(small), ids), outputs, atol=1e-4)
    table = small.get_layer("embedding").embeddings
    table.assign(np.concatenate([np.full((1, 8), 5.0, np.float32), table.numpy()[1:]]))
    assert_same_outputs(small(ids), outputs, atol=0)  # the padding's row is masked out, so it changes nothing
