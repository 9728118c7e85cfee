"""The Keras rule hook: a custom layer is left alone (and named) without a rule, and pruned like a
built-in layer with one."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import prunekit.keras as pk
from prunekit.errors import ConfigError
from prunekit.keras.structured.rules import ChannelRule, Coupling, RuleError
from tests.assertions import assert_same_outputs

L = keras.layers


@keras.saving.register_keras_serializable(package="prunekit_tests")
class ChannelScale(L.Layer):
    """Multiplies each channel (last axis) by a learned scale."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="scale")

    def call(self, x):
        return x * self.scale


class ChannelScaleRule(ChannelRule):
    """Channel c of the input is the scale's entry c and channel c of the output."""

    def couple(self, layer, ctx: Coupling) -> None:
        ctx.tie(ctx.input(0), ctx.weight("scale")[0])
        ctx.pass_through(0)


RULES = {ChannelScale: ChannelScaleRule()}


def scaled_cnn() -> keras.Model:
    keras.utils.set_random_seed(0)
    x = keras.Input((8, 8, 1), name="image")
    h = L.ReLU(name="relu")(ChannelScale(name="scale")(L.Conv2D(8, 3, name="conv")(x)))
    h = ChannelScale(name="scale2")(L.Dense(16, name="fc")(L.GlobalAveragePooling2D(name="pool")(h)))
    model = keras.Model(x, L.Dense(3, name="out")(h))
    for name in ("scale", "scale2"):
        weight = model.get_layer(name).scale
        weight.assign(np.random.default_rng(1).uniform(0.5, 2.0, weight.shape).astype("float32"))
    return model


def _images(count=5):
    return np.random.default_rng(0).random((count, 8, 8, 1), dtype=np.float32)


def test_without_a_rule_the_channels_a_custom_layer_touches_stay_and_the_message_names_it():
    model = scaled_cnn()
    conv = next(g for g in pk.channel_groups(model) if g.producers == ("conv",))
    assert conv.size == 0
    assert "ChannelScale layer 'scale'" in conv.locked_reason and "rules={ChannelScale: ChannelRule()}" in conv.locked_reason
    small = pk.prune_channels(model, ratio=0.5).model
    assert (small.get_layer("conv").filters, small.get_layer("fc").units) == (8, 16)
    with pytest.raises(ConfigError, match=r"channel 0 of layer 'conv' cannot be removed: it feeds ChannelScale layer 'scale'"):
        pk.remove_channels(model, channels={"conv": [0]})


def test_with_a_rule_the_custom_layer_shrinks_and_equals_the_masked_dense_model(tmp_path):
    model = scaled_cnn()
    x = _images()
    result = pk.prune_channels(model, x, 0.5, rules=RULES)
    small = result.model
    removed = result.plan["channels"]
    assert sorted(removed) == ["conv", "fc"] and (len(removed["conv"]), len(removed["fc"])) == (4, 8)
    assert (small.get_layer("conv").filters, small.get_layer("fc").units) == (4, 8)
    kept = [c for c in range(8) if c not in removed["conv"]]
    np.testing.assert_array_equal(small.get_layer("scale").scale.numpy(), model.get_layer("scale").scale.numpy()[kept])
    assert small.get_layer("scale2").scale.shape == (8,)

    masked = keras.models.clone_model(model)
    masked.set_weights(model.get_weights())
    for name in ("conv", "fc"):
        kernel, bias = masked.get_layer(name).get_weights()
        kernel[..., removed[name]], bias[removed[name]] = 0.0, 0.0
        masked.get_layer(name).set_weights([kernel, bias])
    assert small(x).shape == model(x).shape == (5, 3)
    assert_same_outputs(small(x), masked(x), atol=1e-5)
    assert np.abs(np.asarray(small(x)) - np.asarray(model(x))).max() > 1e-3  # live channels went: the oracle can tell

    path = tmp_path / "small.keras"
    small.save(path)
    assert_same_outputs(keras.saving.load_model(path)(x), small(x), atol=1e-6)


def test_the_plan_replays_with_the_same_rules():
    model = scaled_cnn()
    result = pk.prune_channels(model, ratio=0.25, rules=RULES)
    again = pk.remove_channels(model, rules=RULES, **result.plan).model
    assert_same_outputs(again(_images()), result.model(_images()), atol=1e-6)


class WrongWidthRule(ChannelRule):
    def couple(self, layer, ctx: Coupling) -> None:
        ctx.tie(ctx.input(0)[:3], ctx.weight("scale")[0])
        ctx.pass_through(0)


class ForgetsTheScaleRule(ChannelRule):
    def couple(self, layer, ctx: Coupling) -> None:
        ctx.pass_through(0)


def test_an_inconsistent_rule_and_a_bad_rules_argument_are_refused_with_the_names():
    with pytest.raises(RuleError, match=r"rule ForgetsTheScaleRule for ChannelScale layer 'scale': the rebuilt layer's weights"):
        pk.prune_channels(scaled_cnn(), ratio=0.5, rules={ChannelScale: ForgetsTheScaleRule()})
    with pytest.raises(
        RuleError, match=r"rule WrongWidthRule for ChannelScale layer 'scale': tie\(\) got label arrays of 3 and 8"
    ):
        pk.prune_channels(scaled_cnn(), ratio=0.5, rules={ChannelScale: WrongWidthRule()})
    with pytest.raises(ConfigError, match="rules: key .* should be a keras.layers.Layer subclass"):
        pk.prune_channels(scaled_cnn(), ratio=0.5, rules={"ChannelScale": ChannelScaleRule()})
    with pytest.raises(ConfigError, match=r"rules\[ChannelScale\] should be a ChannelRule instance"):
        pk.remove_channels(scaled_cnn(), channels={}, rules={ChannelScale: object()})


@keras.saving.register_keras_serializable(package="prunekit_tests")
class Projection(L.Layer):
    """A bias-free projection to ``units`` features with its own kernel (a custom producer)."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), initializer="glorot_uniform", name="kernel")

    def call(self, x):
        return keras.ops.matmul(x, self.kernel)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


class ProjectionRule(ChannelRule):
    """Kernel rows read the input channels; its columns make ``units`` new ones."""

    def couple(self, layer, ctx: Coupling) -> None:
        ctx.tie(ctx.weight("kernel")[0], ctx.input(0))
        ctx.set_output(ctx.produce("kernel", 1))

    def shrink(self, layer, ctx):
        return {"units": ctx.shape("kernel")[1]}


def test_a_custom_producer_is_a_group_and_loses_its_lowest_norm_columns():
    keras.utils.set_random_seed(0)
    x = keras.Input((10,), name="features")
    model = keras.Model(x, L.Dense(3, name="out")(L.ReLU()(Projection(12, name="proj")(x))))
    kernel = model.get_layer("proj").kernel.numpy()
    kernel[:, [1, 5, 8]] *= 1e-3
    model.get_layer("proj").kernel.assign(kernel)
    rules = {Projection: ProjectionRule()}
    assert [g.producers for g in pk.channel_groups(model)] == [("out",)]  # without the rule: not a producer
    groups = {g.producers: g for g in pk.channel_groups(model, rules=rules)}
    np.testing.assert_allclose(groups[("proj",)].norms(1), np.abs(kernel).sum(axis=0), rtol=1e-6)
    result = pk.prune_channels(model, ratio=0.25, rules=rules)
    assert result.plan["channels"] == {"proj": [1, 5, 8]}
    small = result.model
    assert small.get_layer("proj").units == 9 and small.get_layer("out").kernel.shape == (9, 3)
    features = np.random.default_rng(0).random((4, 10), dtype=np.float32)
    np.testing.assert_allclose(small.get_layer("proj").kernel.numpy(), kernel[:, [0, 2, 3, 4, 6, 7, 9, 10, 11]])
    assert small(features).shape == (4, 3)
