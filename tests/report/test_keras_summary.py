"""Keras metrics: per-layer MACs equal hand counts, sparse MACs follow kernel density, latency per batch size."""

import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
keras = pytest.importorskip("keras", reason="the Keras metrics need the 'keras' extra")

from prunekit.keras.summary import measure_latency, summarize  # noqa: E402


def test_digits_cnn_macs_per_layer_equal_hand_counts():
    from prunekit.keras import digits_cnn

    summary = summarize(digits_cnn(channels=(8, 16), hidden=32))
    assert summary.layer("conv1").macs == 8 * 8 * 8 * 1 * 9
    assert summary.layer("conv2").macs == 16 * 8 * 8 * 8 * 9
    assert summary.layer("fc1").macs == (16 * 4 * 4) * 32
    assert summary.layer("bn1").macs == 0 and summary.layer("bn1").params == 16  # gamma and beta


def test_depthwise_and_transposed_convolutions_follow_their_formulas():
    inputs = keras.Input((6, 6, 4))
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(inputs)
    outputs = keras.layers.Conv2DTranspose(5, 2, strides=2, name="up")(x)
    summary = summarize(keras.Model(inputs, outputs))
    assert summary.layer("dw").macs == 6 * 6 * 4 * 9
    assert summary.layer("up").macs == (6 * 6 * 4) * 4 * 5


def test_sparse_macs_scale_with_kernel_density():
    inputs = keras.Input((10,))
    dense = keras.layers.Dense(4, name="fc")
    model = keras.Model(inputs, dense(inputs))
    kernel = np.ones((10, 4), "float32")
    kernel[:5] = 0
    dense.kernel.assign(kernel)
    dense.bias.assign(np.ones(4, "float32"))
    row = summarize(model).layer("fc")
    assert (row.macs, row.sparse_macs, row.nonzeros) == (40, 20, 20 + 4)


def test_keras_latency_has_one_row_per_batch_size():
    from prunekit.keras import digits_mlp

    results = measure_latency(digits_mlp(), (8, 8, 1), batch_sizes=(1, 4), warmup=1, repeats=3)
    assert [r.batch_size for r in results] == [1, 4]
    assert all(0 < r.median_ms <= r.p90_ms for r in results)


def test_inspect_command_reads_a_saved_keras_model(tmp_path, capsys):
    import json

    from prunekit.cli import main
    from prunekit.keras import digits_cnn

    path = tmp_path / "cnn.keras"
    digits_cnn(channels=(8, 16), hidden=32).save(path)
    out = tmp_path / "inspect.json"
    assert main(["inspect", str(path), "--input-shape", "8,8,1", "--latency", "--batch-sizes", "2", "--repeats", "2",
                 "--json", str(out)]) == 0
    assert "conv2" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["framework"] == "keras"
    assert result["summary"]["macs"] == 8 * 8 * 8 * 9 + 16 * 8 * 8 * 8 * 9 + 256 * 32 + 32 * 10
    assert result["latency"][0]["batch_size"] == 2
