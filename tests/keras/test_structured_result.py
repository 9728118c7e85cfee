"""Keras' prune_channels/remove_channels return the PyTorch backend's StructuredResult, with a real report."""

import warnings

import keras
import numpy as np
import pytest

import prunekit.keras as pk
from prunekit.core.structured import StructuredResult
from prunekit.errors import ConfigError
from prunekit.torch.structured.prune import StructuredResult as TorchResult

L = keras.layers


def test_the_result_type_is_the_torch_backends_and_the_report_counts_every_group_and_layer():
    assert StructuredResult is TorchResult
    model = pk.digits_cnn()
    result = pk.prune_channels(model, ratio=0.5, exclude=["conv1"])
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
    result = pk.prune_channels(model, ratio=0.25)
    again = pk.remove_channels(model, **result.plan)
    x = np.random.default_rng(0).random((4, 8, 8, 1), dtype=np.float32)
    np.testing.assert_allclose(np.asarray(again.model(x)), np.asarray(result.model(x)), rtol=1e-6, atol=1e-6)
    assert again.report.params_after == result.report.params_after
    groups = {g.name: g for g in again.report.groups}
    assert groups["conv2"].requested_ratio == pytest.approx(16 / 64)


def test_reading_model_attributes_from_the_result_still_works_for_one_release_with_a_warning():
    result = pk.remove_channels(pk.digits_cnn(), channels={"conv1": [0, 1]})
    with pytest.warns(DeprecationWarning, match="use result.model.count_params"):
        params = result.count_params()
    assert params == result.model.count_params()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError):
            result.not_an_attribute_anywhere  # noqa: B018


def test_sparsity_and_a_positional_ratio_still_work_with_a_warning_naming_ratio():
    model = pk.digits_cnn()
    expected = pk.prune_channels(model, ratio=0.25).report.params_after
    with pytest.warns(DeprecationWarning, match=r"sparsity=.*deprecated; call it ratio="):
        assert pk.prune_channels(model, sparsity=0.25).report.params_after == expected
    with pytest.warns(DeprecationWarning, match=r"ratio=0.25"):
        assert pk.prune_channels(model, 0.25).report.params_after == expected


def test_a_channel_mapping_passed_second_still_works_with_a_warning_naming_channels():
    model = pk.digits_cnn()
    with pytest.warns(DeprecationWarning, match=r"channels=\{\.\.\.\}"):
        result = pk.remove_channels(model, {"conv1": [0, 1]})
    assert result.model.get_layer("conv1").filters == 30


def test_example_inputs_are_run_through_both_models_and_a_bad_ratio_is_refused():
    model = pk.digits_cnn()
    x = np.random.default_rng(0).random((2, 8, 8, 1), dtype=np.float32)
    result = pk.prune_channels(model, x, 0.5)
    assert tuple(result.model(x).shape) == (2, 10)
    assert pk.remove_channels(model, x, {"conv1": [3]}).model.get_layer("conv1").filters == 31
    with pytest.raises(ConfigError, match="ratio should be a fraction of channels in \\[0, 1\\), got 1.5"):
        pk.prune_channels(model, x, 1.5)
    with pytest.raises(ConfigError, match="failed on example_inputs"):
        pk.prune_channels(model, np.zeros((2, 5, 5, 3), np.float32), 0.5)
