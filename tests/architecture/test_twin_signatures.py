"""The torch and Keras structured-pruning verbs are twins: the parameters they share have the same
names, order and kind, so a call written for one backend reads the same for the other."""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Callable

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="needs the keras extra")

SHARED = {
    "prune_channels": ["model", "example_inputs", "ratio", "importance", "rules"],
    "remove_channels": ["model", "example_inputs", "channels", "rules"],
}


def _parameters(function: Callable) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(function).parameters)


@pytest.mark.parametrize("verb", sorted(SHARED))
def test_shared_parameters_have_the_same_names_order_and_kind(verb: str) -> None:
    import prunekit.keras as pk
    import prunekit.torch as pt

    torch_params, keras_params = _parameters(getattr(pt, verb)), _parameters(getattr(pk, verb))
    shared = [name for name in torch_params if name in keras_params]
    assert shared == SHARED[verb]
    assert [name for name in keras_params if name in torch_params] == shared  # same order
    for name in shared:
        assert keras_params[name].kind == torch_params[name].kind, f"{verb}({name}=...) differs in kind"
    positional = [p.name for p in torch_params.values() if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    assert [p.name for p in keras_params.values() if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD] == positional


def test_keras_prune_channels_selects_layers_with_the_projects_exclude_name() -> None:
    import prunekit.keras as pk
    from prunekit.torch import prune_unstructured

    keras_params = _parameters(pk.prune_channels)
    assert "exclude" in _parameters(prune_unstructured) and "exclude" in keras_params  # one name for "leave these layers alone"
    assert keras_params["exclude"].kind is inspect.Parameter.KEYWORD_ONLY
    assert "ignore" not in keras_params


# the measuring and trade-off verbs: (torch home, Keras home) -> the parameters both take, in this order
MEASURE_TWINS = {
    "measure_latency": (
        "prunekit.torch",
        "prunekit.keras.measure.summary",
        ["model", "sample_shape", "batch_sizes", "warmup", "repeats"],
    ),
    "measure_peak_memory": (
        "prunekit.torch",
        "prunekit.keras.measure.summary",
        ["model", "sample_shape", "batch_size", "device"],
    ),
    "analyze_sensitivity": (
        "prunekit.torch",
        "prunekit.keras",
        ["model", "metric", "ratios", "layers", "method", "prune", "example_inputs", "workers", "metric_name"],
    ),
    "Accuracy": ("prunekit.torch", "prunekit.keras", ["x", "y", "batch_size"]),
}


# torch measures on "cpu" unless told; Keras on the device TensorFlow places the model on (None)
DEFAULTS_THAT_DIFFER = {("measure_peak_memory", "device")}


@pytest.mark.parametrize("verb", sorted(MEASURE_TWINS))
def test_measuring_and_trade_off_twins_share_their_parameters_and_kinds(verb: str) -> None:
    import importlib

    torch_home, keras_home, shared = MEASURE_TWINS[verb]
    torch_params = _parameters(getattr(importlib.import_module(torch_home), verb))
    keras_params = _parameters(getattr(importlib.import_module(keras_home), verb))
    assert [name for name in torch_params if name in keras_params] == shared
    assert [name for name in keras_params if name in torch_params] == shared
    for name in shared:
        assert keras_params[name].kind == torch_params[name].kind, f"{verb}({name}=...) differs in kind"
        if (verb, name) not in DEFAULTS_THAT_DIFFER:
            assert keras_params[name].default == torch_params[name].default, f"{verb}({name}=...) differs in default"


def test_both_backends_return_the_same_record_types() -> None:
    import prunekit.keras as pk
    import prunekit.keras.measure.summary as keras_measure
    import prunekit.torch as pt
    import prunekit.torch.measure.latency as torch_measure
    from prunekit.core.records import LatencyResult, MemoryResult

    assert pk.PruningRun is pt.PruningRun
    for module in (keras_measure, torch_measure):
        assert module.LatencyResult is LatencyResult and module.MemoryResult is MemoryResult
