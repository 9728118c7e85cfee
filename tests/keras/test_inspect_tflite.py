"""``summarize_tflite`` and ``prunekit inspect model.tflite``: a converted file's rows agree with the Keras model's.

The converter folds each BatchNormalization into the Conv2D before it: the conv's stored weight
and bias are the folded ones (same shapes, the kernel's zeros kept, since folding scales each
output channel by gamma / sqrt(var + eps)), and the file has no BN row. So every TFLite row has
the params and MACs of its Keras layer, MACs total the same, and params total the Keras params
minus the BN layers' trainable gamma and beta (2 × (32 + 64) = 192 for the digits CNN).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import prunekit.keras as pk  # noqa: E402
from prunekit.artifacts.tflite_summary import summarize_tflite  # noqa: E402
from prunekit.cli import main  # noqa: E402
from prunekit.errors import CorruptFileError  # noqa: E402
from prunekit.keras.measure.summary import summarize  # noqa: E402

WEIGHTED = ["conv1", "conv2", "fc1", "fc2"]
TYPES = ["CONV_2D", "CONV_2D", "FULLY_CONNECTED", "FULLY_CONNECTED"]
BN_PARAMS = 2 * (32 + 64)
QUANTIZATIONS = ("float", "dynamic", "int8")


def _randomized_cnn():
    """The digits CNN with random biases and BN statistics, so that folding changes every value
    (the converter drops an all-zero bias, as a freshly built Dense has)."""
    keras.utils.set_random_seed(0)
    model = pk.digits_cnn()
    rng = np.random.default_rng(0)
    for layer in model.layers:
        for weight in layer.weights:
            if weight.path.endswith(("bias", "gamma", "beta", "moving_mean")):
                weight.assign(rng.uniform(0.5, 1.5, weight.shape).astype("float32") * rng.choice([-1, 1], weight.shape))
            elif weight.path.endswith("moving_variance"):
                weight.assign(rng.uniform(0.5, 2.0, weight.shape).astype("float32"))
    return model


@pytest.fixture(scope="module")
def files(digits, tmp_path_factory):
    work = tmp_path_factory.mktemp("inspect_tflite")
    dense = _randomized_cnn()
    pruned = pk.prune_one_shot(dense, digits.x_train[:64], digits.y_train[:64], 0.8, finetune_epochs=1).model
    paths = {}
    for name, model in (("dense", dense), ("pruned", pruned)):
        for quantization in QUANTIZATIONS:
            paths[name, quantization] = work / f"{name}.{quantization}.tflite"
            calibration = digits.x_val[:32] if quantization == "int8" else None
            pk.convert_to_tflite(model, quantization, calibration, output_path=paths[name, quantization])
    return {"paths": paths, "dense": dense, "pruned": pruned}


def _keras_rows(model):
    summary = summarize(model)
    return [summary.layer(name) for name in WEIGHTED]


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
def test_each_row_has_the_params_and_macs_of_its_keras_layer(files, quantization):
    tflite = summarize_tflite(files["paths"]["dense", quantization])
    keras_summary = summarize(files["dense"])
    assert [row.type for row in tflite.layers] == TYPES
    for layer, row in zip(WEIGHTED, tflite.layers):  # the weight tensor's name, e.g. digits_cnn_1/conv1_1/convolution
        assert re.search(rf"/{layer}(_\d+)?/(convolution|MatMul)$", row.name), row.name
    assert [(row.params, row.macs) for row in tflite.layers] == [(row.params, row.macs) for row in _keras_rows(files["dense"])]
    assert tflite.macs == keras_summary.macs == 32 * 64 * 9 + 64 * 64 * 9 * 32 + 128 * 1024 + 10 * 128
    assert tflite.params == keras_summary.params - BN_PARAMS


def test_depthwise_grouped_transposed_and_sequence_dense_rows_count_the_keras_macs(tmp_path):
    """TFLite stores a Dense on a sequence as a FULLY_CONNECTED over rows whose count the converter leaves
    dynamic (resolved in a run), and adds its bias in a separate ADD, which the row owns."""
    layers = keras.layers
    inputs = keras.Input((8, 8, 3))
    x = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw")(inputs)
    x = layers.Conv2D(8, 3, strides=2, padding="same", groups=2, name="grouped")(x)
    x = layers.Conv2DTranspose(4, 3, strides=2, padding="same", name="transposed")(x)
    x = layers.Dense(5, name="dense")(layers.Reshape((64, 4))(x))
    model = keras.Model(inputs, x)
    rng = np.random.default_rng(0)
    for weight in model.weights:
        weight.assign(rng.normal(size=weight.shape).astype("float32"))
    path = tmp_path / "ops.tflite"
    pk.convert_to_tflite(model, output_path=path)
    tflite, keras_summary = summarize_tflite(path), summarize(model)
    assert [row.type for row in tflite.layers] == ["DEPTHWISE_CONV_2D", "CONV_2D", "TRANSPOSE_CONV", "FULLY_CONNECTED"]
    assert (
        [row.macs for row in tflite.layers]
        == [row.macs for row in keras_summary.layers]
        == [8 * 8 * 6 * 9, 4 * 4 * 8 * 9 * 3, 4 * 4 * 8 * 9 * 4, 64 * 5 * 4]
    )
    assert [row.params for row in tflite.layers] == [row.params for row in keras_summary.layers] == [60, 224, 292, 25]


@pytest.mark.parametrize("quantization", ["float", "dynamic"])
def test_an_80_percent_pruned_file_keeps_the_keras_sparsity_of_every_layer_exactly(files, quantization):
    tflite = summarize_tflite(files["paths"]["pruned", quantization])
    keras_rows = _keras_rows(files["pruned"])
    assert [(row.params, row.nonzeros, row.macs, row.sparse_macs) for row in tflite.layers] == [
        (row.params, row.nonzeros, row.macs, row.sparse_macs) for row in keras_rows
    ]
    assert [row.sparsity for row in tflite.layers] == [row.sparsity for row in keras_rows]
    assert tflite.layers[2].sparsity == pytest.approx(0.8, abs=0.01)  # fc1, the largest layer


def test_int8_rounds_no_weight_an_80_percent_pruning_keeps_to_zero(files):
    """Per-channel symmetric int8 maps a weight to 0 only below max|w| / 254 of its channel: none of the 20%
    largest weights an 80% magnitude pruning keeps is that small, so every int8 file has the float zeros
    (the dense model's small weights do round to 0: its int8 files have extra zeros)."""
    dense_float, dense_dynamic = (summarize_tflite(files["paths"]["dense", q]).layers for q in ("float", "dynamic"))
    assert dense_float[1].nonzeros == summarize(files["dense"]).layer("conv2").nonzeros
    assert dense_dynamic[1].nonzeros < dense_float[1].nonzeros
    float_rows = summarize_tflite(files["paths"]["pruned", "float"]).layers
    for quantization in ("dynamic", "int8"):
        rows = summarize_tflite(files["paths"]["pruned", quantization]).layers
        assert [row.nonzeros for row in rows] == [row.nonzeros for row in float_rows], quantization


def test_inspect_prints_the_table_and_writes_the_same_numbers_as_json(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")  # rich's 80 columns of a pipe would crop the numbers beside the names
    path = files["paths"]["pruned", "int8"]
    out = tmp_path / "inspect.json"
    assert main(["inspect", str(path), "--latency", "--batch-sizes", "1,4", "--repeats", "2", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = summarize_tflite(path)
    result = json.loads(out.read_text())
    assert result["framework"] == "tflite"
    assert result["summary"] == summary.to_dict()
    assert f"{summary.macs:,}" in printed and f"{summary.nonzeros:,}" in printed
    assert result["sizes"]["raw_bytes"] == path.stat().st_size
    assert f"{path.name}: {result['sizes']['raw_bytes']:,} bytes raw" in printed
    assert result["memory"] == []
    assert [row["batch_size"] for row in result["latency"]] == [1, 4]  # the converter keeps the batch dynamic
    assert all(row["median_ms"] > 0 and row["runs"] == 2 for row in result["latency"])


def test_a_file_with_a_fixed_batch_is_timed_at_that_batch_and_says_so(tmp_path, capsys):
    inputs = keras.Input((4,), batch_size=1)
    path = tmp_path / "fixed.tflite"
    pk.convert_to_tflite(keras.Model(inputs, keras.layers.Dense(3)(inputs)), output_path=path)
    out = tmp_path / "fixed.json"
    assert main(["inspect", str(path), "--latency", "--batch-sizes", "1,4", "--repeats", "2", "--json", str(out)]) == 0
    assert "fixed.tflite fixes its batch size to 1: latency is timed at batch 1 only" in capsys.readouterr().out
    assert [row["batch_size"] for row in json.loads(out.read_text())["latency"]] == [1]


@pytest.mark.parametrize("content", [b"not a flatbuffer", "truncated"])
def test_a_corrupt_file_names_the_file_and_the_fix(files, tmp_path, capsys, content):
    path = tmp_path / "broken.tflite"
    good = files["paths"]["dense", "float"].read_bytes()
    path.write_bytes(good[: len(good) // 3] if content == "truncated" else content)
    with pytest.raises(CorruptFileError, match=r"broken\.tflite .*convert the model again"):
        summarize_tflite(path)
    assert main(["inspect", str(path)]) == 2
    assert "broken.tflite" in capsys.readouterr().err


def test_input_shape_is_refused_since_the_file_fixes_its_own(files, capsys):
    assert main(["inspect", str(files["paths"]["dense", "float"]), "--input-shape", "8,8,1"]) == 2
    assert "fixes its own input shape; drop --input-shape" in capsys.readouterr().err


def test_summarize_tflite_reads_the_file_without_tensorflow_or_keras(files):
    code = (
        "import sys; from prunekit.artifacts.tflite_summary import summarize_tflite; "
        f"assert summarize_tflite({str(files['paths']['dense', 'int8'])!r}).macs > 0; "
        "assert not any(m.split('.')[0] in ('keras', 'tensorflow') for m in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
