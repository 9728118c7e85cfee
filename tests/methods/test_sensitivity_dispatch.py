"""Sensitivity prunes each layer the way a registered method would: its layer pruner, found through the registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.methods import get_method, list_methods
from prunekit.torch.tradeoffs.sensitivity import ChannelPruner, MagnitudePruner, analyze_sensitivity

W1 = torch.arange(1, 49, dtype=torch.float32).reshape(6, 8) / 48  # row k's L1 norm grows with k
W2 = torch.arange(1, 25, dtype=torch.float32).reshape(4, 6) / 24
W3 = torch.arange(1, 5, dtype=torch.float32).reshape(1, 4) / 4


class Chain(nn.Module):
    """Three positive linears without bias: the mean output on ones is w3 @ w2 @ w1 @ 1."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second, self.third = (
            nn.Linear(8, 6, bias=False),
            nn.Linear(6, 4, bias=False),
            nn.Linear(4, 1, bias=False),
        )
        with torch.no_grad():
            for layer, weight in zip((self.first, self.second, self.third), (W1, W2, W3)):
                layer.weight.copy_(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.third(self.second(self.first(x)))


def output_mean(model: nn.Module) -> float:
    with torch.no_grad():
        return float(model(torch.ones(2, 8)).mean())


def by_hand(rows_removed: dict[str, int]) -> float:
    """The output with the given number of lowest-norm output rows (channels) of each layer zeroed."""
    weights = {"first": W1.clone(), "second": W2.clone()}
    for name, count in rows_removed.items():
        weights[name][:count] = 0  # rows are sorted by norm: the first ``count`` are the smallest
    return float(W3 @ weights["second"] @ weights["first"] @ torch.ones(8))


def test_channels_method_removes_each_layers_lowest_channels_and_skips_the_output_layer() -> None:
    table = analyze_sensitivity(Chain(), output_mean, (0.5,), method="channels", example_inputs=torch.ones(1, 8))
    assert table.layers == ["first", "second"]  # "third" feeds the model output: its channels stay
    assert table.baseline == pytest.approx(by_hand({}), rel=1e-6)
    assert table.scores["first"][0] == pytest.approx(by_hand({"first": 3}), rel=1e-6)
    assert table.scores["second"][0] == pytest.approx(by_hand({"second": 2}), rel=1e-6)


def test_an_unstructured_method_prunes_weights_as_the_default_does() -> None:
    by_method = analyze_sensitivity(Chain(), output_mean, (0.25, 0.5), method="gradual")
    default = analyze_sensitivity(Chain(), output_mean, (0.25, 0.5))
    assert by_method.to_dict() == default.to_dict()
    assert by_method.layers == ["first", "second", "third"]
    first = W1.flatten().clone()
    first[:24] = 0  # the 24 smallest of 48 positive weights
    assert by_method.scores["first"][1] == pytest.approx(float(W3 @ W2 @ first.reshape(6, 8) @ torch.ones(8)), rel=1e-6)


def test_the_registry_gives_the_same_pruners_as_the_classes() -> None:
    assert isinstance(get_method("one-shot").layer_pruner("torch"), MagnitudePruner)
    assert isinstance(get_method("structured").layer_pruner("torch", torch.ones(1, 8)), ChannelPruner)  # an alias
    assert all("torch" in m.layer_pruners for m in list_methods(kind="structured"))
    assert get_method("channels").to_dict()["sensitivity"] == ["torch", "keras"]


def test_a_method_without_a_layer_pruner_and_conflicting_arguments_are_refused() -> None:
    with pytest.raises(ConfigError, match="'one-shot-random' cannot be analysed layer by layer in torch"):
        analyze_sensitivity(Chain(), output_mean, (0.5,), method="one-shot-random")
    with pytest.raises(ConfigError, match="either method= .* or prune="):
        analyze_sensitivity(Chain(), output_mean, (0.5,), method="gradual", prune=MagnitudePruner())
    with pytest.raises(ConfigError, match="no method 'chanels'|'chanels'"):
        analyze_sensitivity(Chain(), output_mean, (0.5,), method="chanels")


def test_keras_twin_removes_channels_through_the_same_registry_entry() -> None:
    keras = pytest.importorskip("keras")
    from prunekit.keras.tradeoffs.sensitivity import analyze_sensitivity as keras_sensitivity

    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(6, use_bias=False, name="first")(inputs)
    hidden = keras.layers.Dense(4, use_bias=False, name="second")(hidden)
    model = keras.Model(inputs, keras.layers.Dense(1, use_bias=False, name="third")(hidden))
    for name, weight in (("first", W1), ("second", W2), ("third", W3)):
        model.get_layer(name).set_weights([weight.numpy().T])  # Keras kernels are (in, out)

    def keras_mean(m: object) -> float:
        return float(np.asarray(m(np.ones((2, 8), dtype="float32"))).mean())  # type: ignore[operator]

    table = keras_sensitivity(model, keras_mean, (0.5,), method="channels")
    assert table.layers == ["first", "second"]
    assert table.scores["first"][0] == pytest.approx(by_hand({"first": 3}), rel=1e-5)
    assert table.scores["second"][0] == pytest.approx(by_hand({"second": 2}), rel=1e-5)
    assert model.get_layer("first").kernel.shape == (8, 6)  # the model itself is untouched
    with pytest.raises(ConfigError, match="workers=2: Keras sensitivity"):
        keras_sensitivity(model, keras_mean, (0.5,), workers=2)
