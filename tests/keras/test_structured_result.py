"""Keras' prune_channels/remove_channels return the PyTorch backend's StructuredResult, with a real report."""

import warnings

import keras
import numpy as np
import pytest

import prunekit.keras as pk
from prunekit.core.structured import StructuredResult
from prunekit.torch.structured.prune import StructuredResult as TorchResult

L = keras.layers


def test_the_result_type_is_the_torch_backends_and_the_report_counts_every_group_and_layer():
    assert StructuredResult is TorchResult
    model = pk.digits_cnn()
    result = pk.prune_channels(model, sparsity=0.5, exclude=["conv1"])
    assert isinstance(result, StructuredResult)
    groups = {g.name: g for g in result.report.groups}
    assert (groups["conv2"].channels_before, groups["conv2"].channels_after, groups["conv2"].requested_ratio) == (64, 32, 0.5)
    assert (groups["conv1"].channels_after, groups["conv1"].skipped) == (32, "not selected (layers/exclude)")
    assert groups["fc2"].skipped  # its outputs are the model's: kept, with the reason
    trainable = [sum(int(np.prod(w.shape)) for w in m.trainable_weights) for m in (model, result.model)]
    assert (result.report.params_before, result.report.params_after) == tuple(trainable)  # parameters, as torch counts
    layers = {layer.name: layer for layer in result.report.layers}
    assert (layers["conv2"].out_channels_before, layers["conv2"].out_channels_after) == (64, 32)
    assert layers["conv2"].macs_after * 2 == layers["conv2"].macs_before  # half the filters, same input channels
    assert result.report.macs_ratio > 1.5
    assert sorted(result.removed) == ["conv2", "fc1"] and len(result.removed["conv2"]) == 32
    assert "conv2" in str(result.report)


def test_the_plan_replays_to_the_same_model():
    model = pk.digits_cnn()
    result = pk.prune_channels(model, sparsity=0.25)
    again = pk.remove_channels(model, **result.plan)
    x = np.random.default_rng(0).random((4, 8, 8, 1), dtype=np.float32)
    np.testing.assert_allclose(np.asarray(again.model(x)), np.asarray(result.model(x)), rtol=1e-6, atol=1e-6)
    assert again.report.params_after == result.report.params_after
    groups = {g.name: g for g in again.report.groups}
    assert groups["conv2"].requested_ratio == pytest.approx(16 / 64)


def test_reading_model_attributes_from_the_result_still_works_for_one_release_with_a_warning():
    result = pk.remove_channels(pk.digits_cnn(), {"conv1": [0, 1]})
    with pytest.warns(DeprecationWarning, match="use result.model.count_params"):
        params = result.count_params()
    assert params == result.model.count_params()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError):
            result.not_an_attribute_anywhere  # noqa: B018
