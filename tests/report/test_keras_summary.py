"""Keras metrics: per-layer MACs equal hand counts, sparse MACs follow kernel density, latency per batch size,
peak inference memory equal to hand-computed liveness (4 bytes per float32)."""

import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
keras = pytest.importorskip("keras", reason="the Keras metrics need the 'keras' extra")

from prunekit.errors import ConfigError  # noqa: E402
from prunekit.keras.measure.summary import measure_latency, measure_peak_memory, summarize  # noqa: E402

layers = keras.layers


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
    assert (
        main(
            [
                "inspect",
                str(path),
                "--input-shape",
                "8,8,1",
                "--latency",
                "--batch-sizes",
                "2",
                "--repeats",
                "2",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    assert "conv2" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["framework"] == "keras"
    assert result["summary"]["macs"] == 8 * 8 * 8 * 9 + 16 * 8 * 8 * 8 * 9 + 256 * 32 + 32 * 10
    assert result["latency"][0]["batch_size"] == 2


def _chain(*units, width=16):
    return keras.Sequential([keras.Input((width,)), *(layers.Dense(n) for n in units)])


def test_peak_memory_of_a_dense_chain_is_weights_input_and_the_two_biggest_adjacent_activations():
    memory = measure_peak_memory(_chain(64, 256, 32, 8), (16,), batch_size=2)
    assert memory.weight_bytes == 4 * (16 * 64 + 64 + 64 * 256 + 256 + 256 * 32 + 32 + 32 * 8 + 8)
    # the input stays alive; the peak is while Dense(256) reads the 64 features: 16 + 64 + 256 floats per sample
    assert memory.peak_activation_bytes == 4 * 2 * (16 + 64 + 256)
    assert memory.peak_bytes == memory.weight_bytes + memory.peak_activation_bytes


def test_a_skip_connection_keeps_its_tensor_alive_past_the_adjacent_pair_peak():
    inputs = keras.Input((8,))
    a = layers.Dense(64)(inputs)
    c = layers.Dense(128)(layers.Dense(256)(a))
    outputs = layers.Concatenate()([a, layers.Dense(4)(c)])
    skip = measure_peak_memory(keras.Model(inputs, outputs), (8,))
    # while Dense(128) runs: input 8, a 64 (kept for the concat), its input 256, its output 128
    assert skip.peak_activation_bytes == 4 * (8 + 64 + 256 + 128)
    chain = measure_peak_memory(_chain(64, 256, 128, 4, width=8), (8,))
    assert chain.peak_activation_bytes == 4 * (8 + 256 + 128)


def test_peak_activations_scale_linearly_with_batch_size_and_weights_do_not():
    from prunekit.keras import digits_cnn

    model = digits_cnn()
    one, sixteen = (measure_peak_memory(model, (8, 8, 1), size) for size in (1, 16))
    # peak while bn2 runs: input 64 + conv2's output 64*64 + bn2's output 64*64 floats per sample
    assert one.peak_activation_bytes == 4 * (64 + 2 * 64 * 64)
    assert sixteen.peak_activation_bytes == 16 * one.peak_activation_bytes
    assert one.weight_bytes == sixteen.weight_bytes == 4 * model.count_params()  # BN's moving statistics included
    assert (one.batch_size, sixteen.batch_size) == (1, 16)


def test_peak_memory_counts_each_tensor_and_weight_in_its_dtype():
    inputs = keras.Input((10,), dtype="int32")
    x = layers.Embedding(100, 16)(inputs)
    outputs = layers.Dense(8, dtype="float16")(layers.GlobalAveragePooling1D()(x))
    memory = measure_peak_memory(keras.Model(inputs, outputs), (10,))
    assert memory.weight_bytes == 4 * 100 * 16 + 2 * (16 * 8 + 8)
    # while the pooling runs: int32 ids, float32 embeddings (10 x 16) and their mean
    assert memory.peak_activation_bytes == 4 * 10 + 4 * 10 * 16 + 4 * 16


def test_flatten_and_dropout_share_their_input_buffer():
    model = keras.Sequential([keras.Input((4, 4, 2)), layers.Flatten(), layers.Dropout(0.5), layers.Dense(8)])
    assert measure_peak_memory(model, (4, 4, 2)).peak_activation_bytes == 4 * (32 + 8)


def test_nested_models_are_flattened_into_their_layer_calls():
    inner = keras.Sequential([keras.Input((64,)), layers.Dense(256), layers.Dense(32)], name="inner")
    inputs = keras.Input((16,))
    model = keras.Model(inputs, layers.Dense(8)(inner(layers.Dense(64)(inputs))))
    nested = measure_peak_memory(model, (16,), batch_size=2)
    flat = measure_peak_memory(_chain(64, 256, 32, 8), (16,), batch_size=2)
    assert nested == flat
    assert nested.peak_activation_bytes == 4 * 2 * (16 + 64 + 256)


def test_peak_memory_agrees_with_the_torch_twin_on_an_equivalent_sequential_cnn():
    torch = pytest.importorskip("torch")
    from torch import nn

    from prunekit.torch.measure.latency import measure_peak_memory as torch_peak_memory

    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            layers.Conv2D(8, 3, padding="same"),
            layers.BatchNormalization(),
            layers.ReLU(),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(32),
            layers.ReLU(),
            layers.Dense(10),
        ]
    )
    twin = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(128, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )
    keras_memory = measure_peak_memory(model, (8, 8, 1), batch_size=4, device="cpu")
    torch_memory = torch_peak_memory(twin, (1, 8, 8), batch_size=4)
    # tolerance: activations exactly equal; weights differ by BatchNorm2d's int64 num_batches_tracked only
    assert keras_memory.peak_activation_bytes == torch_memory.peak_activation_bytes == 4 * 4 * (64 + 2 * 512)
    assert torch_memory.weight_bytes - keras_memory.weight_bytes == torch.tensor(0).element_size()


def test_peak_memory_refuses_a_subclassed_model_by_name():
    class Net(keras.Model):
        def __init__(self):
            super().__init__(name="net")
            self.fc = layers.Dense(4)

        def call(self, x):
            return self.fc(x)

    net = Net()
    net(np.zeros((1, 3), "float32"))
    with pytest.raises(ConfigError, match="'net' is a subclassed Net.*functional API"):
        measure_peak_memory(net, (3,))


def test_peak_memory_refuses_a_sample_shape_that_does_not_fit_the_input():
    with pytest.raises(ConfigError, match=r"sample_shape \(8, 8\) does not fit.*\(16,\)"):
        measure_peak_memory(_chain(4), (8, 8))
    with pytest.raises(ConfigError, match="batch_size"):
        measure_peak_memory(_chain(4), (16,), batch_size=0)


def test_inspect_command_prints_and_writes_peak_memory_of_a_saved_keras_model(tmp_path, capsys):
    import json

    from prunekit.cli import main
    from prunekit.keras import digits_cnn

    path = tmp_path / "cnn.keras"
    digits_cnn(channels=(8, 16), hidden=32).save(path)
    out = tmp_path / "inspect.json"
    assert main(["inspect", str(path), "--input-shape", "8,8,1", "--batch-sizes", "1,4", "--json", str(out)]) == 0
    weights = 4 * (8 * 9 + 8 + 4 * 8 + 16 * 8 * 9 + 16 + 4 * 16 + 256 * 32 + 32 + 32 * 10 + 10)  # 39,592
    activations = 4 * (64 + 2 * 16 * 64)  # per sample, while bn2 runs
    printed = capsys.readouterr().out
    assert f"peak inference memory at batch 1: {weights + activations:,} bytes" in printed
    assert f"peak inference memory at batch 4: {weights + 4 * activations:,} bytes" in printed
    memory = json.loads(out.read_text())["memory"]
    assert [(m["batch_size"], m["weight_bytes"], m["peak_activation_bytes"], m["peak_bytes"]) for m in memory] == [
        (1, weights, activations, weights + activations),
        (4, weights, 4 * activations, weights + 4 * activations),
    ]
