"""Structured pruning on Keras 3: physically fewer filters/neurons, coupled channels, and the oracle."""

import keras
import numpy as np
import pytest

import prunekit.keras as pk
from prunekit import ConfigError, LayerNotFoundError
from tests.assertions import assert_same_outputs

L = keras.layers


def _randomize_batchnorm(model, rng):
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            gamma, beta, mean, var = (w.numpy() for w in layer.weights)
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, gamma.shape),
                    rng.normal(0, 0.3, beta.shape),
                    rng.normal(0, 0.3, mean.shape),
                    rng.uniform(0.5, 1.5, var.shape),
                ]
            )


def branchy_model():
    """Conv-BN, a residual Add of two convs, DepthwiseConv, SeparableConv, Concatenate, GAP and Flatten->Dense."""
    inputs = keras.Input((8, 8, 3), name="image")
    a = L.ReLU(name="relu_a")(L.BatchNormalization(name="bn_a")(L.Conv2D(8, 3, padding="same", name="conv_a")(inputs)))
    b = L.Conv2D(8, 1, name="conv_b")(inputs)
    merged = L.Add(name="add")([a, b])
    depthwise = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="depthwise")(merged)
    separable = L.SeparableConv2D(6, 3, padding="same", name="separable")(depthwise)
    joined = L.Concatenate(name="concat")([separable, merged])
    pooled = L.GlobalAveragePooling2D(name="gap")(joined)
    flat = L.Flatten(name="flatten")(L.MaxPooling2D(name="pool")(joined))
    dense = L.Dense(12, activation="relu", name="fc_flat")(flat)
    outputs = L.Dense(4, name="head")(L.Concatenate(name="concat_head")([pooled, dense]))
    model = keras.Model(inputs, outputs, name="branchy")
    _randomize_batchnorm(model, np.random.default_rng(1))
    return model


def _inputs(model, count=6, seed=0):
    shape = tuple(model.inputs[0].shape[1:])
    return np.random.default_rng(seed).random((count, *shape), dtype=np.float32)


def test_half_of_the_filters_removed_gives_fewer_parameters_and_the_same_output_shape():
    model = pk.digits_cnn()
    small = pk.prune_channels(model, ratio=0.5).model
    x = _inputs(model)
    assert small.count_params() < 0.3 * model.count_params()
    assert small(x).shape == model(x).shape == (6, 10)
    widths = {layer.name: layer.weights[0].shape[-1] for layer in small.layers if layer.name in ("conv1", "conv2", "fc1")}
    assert widths == {"conv1": 16, "conv2": 32, "fc1": 64}
    assert small.get_layer("fc1").kernel.shape == (4 * 4 * 32, 64)


def test_rebuilt_model_keeps_layer_names_and_classes():
    model = branchy_model()
    small = pk.prune_channels(model, ratio=0.5).model
    assert [(type(a), a.name) for a in small.layers] == [(type(b), b.name) for b in model.layers]


def _zero_inputs(model, layer_name, positions, weight_index=0, axis=-2):
    weight = model.get_layer(layer_name).weights[weight_index]
    values = np.moveaxis(weight.numpy(), axis, 0)
    values[positions] = 0
    weight.assign(np.moveaxis(values, 0, axis))


def test_oracle_removing_filters_that_contribute_nothing_keeps_digits_cnn_outputs():
    model = pk.digits_cnn()
    remove = {"conv1": [0, 3, 5, 30], "conv2": list(range(0, 64, 2)), "fc1": list(range(0, 128, 3))}
    _zero_inputs(model, "conv2", remove["conv1"])
    flat_positions = (np.arange(16)[:, None] * 64 + np.array(remove["conv2"])).ravel()
    _zero_inputs(model, "fc1", flat_positions)
    _zero_inputs(model, "fc2", remove["fc1"])
    small = pk.remove_channels(model, channels=remove).model
    x = _inputs(model)
    assert_same_outputs(small(x), model(x), atol=1e-5)
    assert small.get_layer("conv2").kernel.shape == (3, 3, 28, 32)


def test_oracle_through_add_depthwise_separable_concat_pooling_and_flatten():
    model = branchy_model()
    # merged channels 1, 4 (coupled conv_a/conv_b) and separable channels 0, 5 contribute nothing:
    # zero every weight that reads them, then remove them.
    dead_merged, dead_separable = [1, 4], [0, 5]
    concat_dead = dead_separable + [6 + c for c in dead_merged]
    _zero_inputs(model, "separable", [2 * c + k for c in dead_merged for k in range(2)], weight_index=1)
    _zero_inputs(model, "fc_flat", (np.arange(16)[:, None] * 14 + np.array(concat_dead)).ravel())
    _zero_inputs(model, "head", concat_dead)
    small = pk.remove_channels(model, channels={"conv_a": dead_merged, "separable": dead_separable}).model
    x = _inputs(model)
    assert_same_outputs(small(x), model(x), atol=1e-5)
    assert small.get_layer("conv_b").kernel.shape[-1] == 6  # coupled through Add
    assert small.get_layer("depthwise").kernel.shape == (3, 3, 6, 2)
    assert small.get_layer("bn_a").gamma.shape == (6,)
    assert small.get_layer("fc_flat").kernel.shape == (16 * 10, 12)


def test_producers_joined_by_add_are_one_group_and_lose_the_same_channels():
    model = branchy_model()
    groups = {group.producers: group for group in pk.channel_groups(model)}
    assert set(groups) == {("conv_a", "conv_b"), ("separable",), ("fc_flat",), ("head",)}
    small = pk.prune_channels(model, ratio=0.5, layers=["conv_*"]).model
    kept_a = _kept_filters(model.get_layer("conv_a").kernel.numpy(), small.get_layer("conv_a").kernel.numpy())
    kept_b = _kept_filters(model.get_layer("conv_b").kernel.numpy(), small.get_layer("conv_b").kernel.numpy())
    assert kept_a == kept_b and len(kept_a) == 4


def _kept_filters(before, after):
    flat_before = before.reshape(-1, before.shape[-1]).T
    flat_after = after.reshape(-1, after.shape[-1]).T
    return [int(np.flatnonzero((flat_before == row).all(axis=1))[0]) for row in flat_after]


def test_l1_importance_removes_the_filters_with_the_smallest_norm():
    model = pk.digits_cnn()
    kernel = model.get_layer("conv1").kernel.numpy()
    kernel[..., [2, 7, 11]] *= 1e-3
    model.get_layer("conv1").kernel.assign(kernel)
    small = pk.prune_channels(model, ratio=3 / 32, layers=["conv1"]).model
    kept = _kept_filters(kernel, small.get_layer("conv1").kernel.numpy())
    assert kept == [i for i in range(32) if i not in (2, 7, 11)]


def test_a_callable_importance_gets_each_group_and_decides():
    model = pk.digits_cnn()
    seen = []

    def last_channels_first(group):
        seen.append(group.producers)
        return -np.arange(group.size, dtype=float)

    small = pk.prune_channels(model, ratio=0.25, importance=last_channels_first, layers=["fc1"]).model
    assert seen == [("fc1",)]
    kept = _kept_filters(model.get_layer("fc1").kernel.numpy(), small.get_layer("fc1").kernel.numpy())
    assert kept == list(range(96))


def test_importance_returning_the_wrong_shape_is_refused():
    with pytest.raises(ConfigError, match=r"scores of shape \(3,\).*expected \(32,\)"):
        pk.prune_channels(pk.digits_cnn(), importance=lambda group: np.ones(3), layers=["conv1"])


def test_channels_reaching_the_model_output_cannot_be_removed():
    with pytest.raises(ConfigError, match="channel 2 of layer 'fc2' cannot be removed: it reaches the model output 'fc2'"):
        pk.remove_channels(pk.digits_cnn(), channels={"fc2": [2]})


def test_channels_feeding_a_layer_that_is_not_rewritten_are_locked():
    inputs = keras.Input((8, 8, 1))
    x = L.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = L.Dense(6, name="fc")(L.Reshape((8 * 8 * 4,), name="reshape")(x))
    model = keras.Model(inputs, L.Dense(3, name="head")(x))
    group = next(g for g in pk.channel_groups(model) if g.producers == ("conv",))
    assert group.size == 0 and "Reshape layer 'reshape'" in group.locked_reason
    small = pk.prune_channels(model, ratio=0.5).model
    assert small.get_layer("conv").filters == 4 and small.get_layer("fc").units == 3


def test_unknown_layer_name_is_refused():
    with pytest.raises(LayerNotFoundError, match="'fc9' matches no prunable layer"):
        pk.prune_channels(pk.digits_cnn(), layers=["fc9"])


def test_subclassed_model_is_refused_with_the_functional_hint():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.fc = L.Dense(4)

        def call(self, x):
            return self.fc(x)

    net = Net()
    net(np.zeros((1, 3), np.float32))
    with pytest.raises(ConfigError, match="needs a Sequential or Functional model"):
        pk.prune_channels(net)


def test_the_mlp_loses_half_its_hidden_neurons_and_keeps_its_outputs_shape():
    model = pk.digits_mlp()
    small = pk.prune_channels(model, ratio=0.5, importance="l2").model
    assert isinstance(small, keras.Sequential)
    assert [layer.units for layer in small.layers[1:]] == [64, 32, 10]
    assert small(_inputs(model)).shape == (6, 10)
