"""TFLite conversion of the digits CNN and evaluation in the LiteRT interpreter."""

import numpy as np
import pytest

import prunekit.keras as pk
from prunekit import ConfigError
from tests.assertions import assert_same_outputs
from tests.keras.helpers import accuracy


@pytest.fixture(scope="module")
def pruned_model(pruned_90):
    return pruned_90.model


@pytest.fixture(scope="module")
def comparison(dense_cnn, pruned_model, digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("tflite")
    return pk.compare_tflite(dense_cnn, pruned_model, (digits.x_test, digits.y_test), digits.x_val, out, latency_repeats=20), out


def test_full_integer_int8_is_within_one_point_of_the_keras_model(comparison, pruned_model, digits):
    table, _ = comparison
    keras_accuracy = accuracy(pruned_model, digits.x_test, digits.y_test)
    assert table.keras_accuracy["pruned"] == pytest.approx(keras_accuracy)
    assert table.row("pruned int8 full")["accuracy"] >= keras_accuracy - 0.01


def test_gzip_of_the_90_percent_pruned_tflite_is_at_most_035_of_the_dense_one(comparison):
    table, _ = comparison
    assert table.row("pruned fp32")["gzip_bytes"] <= 0.35 * table.row("dense fp32")["gzip_bytes"]


def test_int8_variants_are_about_four_times_smaller_raw(comparison):
    table, _ = comparison
    for name in ("pruned int8 dynamic", "pruned int8 full"):
        assert table.row(name)["size_bytes"] <= 0.3 * table.row("pruned fp32")["size_bytes"], name


def test_comparison_writes_the_four_files_and_a_table_with_their_rows(comparison):
    table, out = comparison
    files = sorted(path.name for path in out.iterdir())
    assert files == ["dense.tflite", "pruned.int8-dynamic.tflite", "pruned.int8-full.tflite", "pruned.tflite"]
    rendered = table.table().to_markdown()
    assert [row["name"] for row in table.rows] == ["dense fp32", "pruned fp32", "pruned int8 dynamic", "pruned int8 full"]
    assert rendered.count("\n| ") == 1 + 4
    assert (out / "pruned.tflite").stat().st_size == table.row("pruned fp32")["size_bytes"]


def test_float_tflite_computes_what_keras_computes(pruned_model, digits):
    interpreter = pk.TFLiteModel(pk.convert_to_tflite(pruned_model))
    x = digits.x_test[:50]
    assert_same_outputs(interpreter.predict(x, batch_size=16), pruned_model.predict(x, verbose=0), atol=1e-4)


def test_wrong_shape_representative_data_names_the_input_and_the_fix(pruned_model, digits):
    channels_first = digits.x_val.transpose(0, 3, 1, 2)
    with pytest.raises(ConfigError, match=r"input 'image' has shape \(1, 1, 8, 8\).*transpose"):
        pk.convert_to_tflite(pruned_model, "int8", representative_data=channels_first)


def test_full_integer_conversion_needs_representative_data(pruned_model):
    with pytest.raises(ConfigError, match="needs representative_data"):
        pk.convert_to_tflite(pruned_model, "int8")


def test_a_model_still_being_pruned_must_be_stripped_first(dense_cnn):
    with pytest.raises(ConfigError, match="strip_pruning"):
        pk.convert_to_tflite(pk.prune_low_magnitude(dense_cnn))


def test_interpreter_input_of_the_wrong_shape_is_refused(pruned_model):
    interpreter = pk.TFLiteModel(pk.convert_to_tflite(pruned_model))
    with pytest.raises(ConfigError, match=r"input 'serving_default_image:0' takes samples of shape \(8, 8, 1\)"):
        interpreter.predict(np.zeros((2, 1, 8, 8), np.float32))


def test_evaluate_tflite_reports_accuracy_latency_and_sizes(pruned_model, digits, tmp_path):
    path = tmp_path / "m.tflite"
    flatbuffer = pk.convert_to_tflite(pruned_model, "dynamic", output_path=path)
    result = pk.evaluate_tflite(path, digits.x_test, digits.y_test, latency_repeats=5)
    assert result["size_bytes"] == len(flatbuffer) == path.stat().st_size
    assert result["gzip_bytes"] < result["size_bytes"]
    assert result["accuracy"] >= accuracy(pruned_model, digits.x_test, digits.y_test) - 0.01
    assert result["latency_ms"] > 0


def test_integer_id_inputs_are_fed_as_ids_not_quantized():
    import keras

    inputs = keras.Input((6,), dtype="int32")
    x = keras.layers.Embedding(20, 4)(inputs)
    outputs = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling1D()(x))
    model = keras.Model(inputs, outputs)
    ids = np.random.default_rng(0).integers(0, 20, size=(5, 6)).astype("int32")
    tflite = pk.TFLiteModel(pk.convert_to_tflite(model))
    np.testing.assert_allclose(tflite.predict(ids), np.asarray(model(ids)), atol=1e-5)
