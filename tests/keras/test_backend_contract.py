"""The two backends implement the contract's verbs with the same names and parameters."""

import inspect

import pytest

from prunekit.methods import Backend, list_methods, load_backend

VERBS = [
    "is_model",
    "clone",
    "fit",
    "accuracy",
    "summarize",
    "measure",
    "measure_latency",
    "measure_sparse_runtime",
    "export",
    "load_weights",
    "prune_channels",
    "analyze_sensitivity",
]


@pytest.mark.parametrize("verb", VERBS)
def test_both_backends_have_the_verb_with_the_same_parameter_names(verb):
    torch_backend, keras_backend = load_backend("torch"), load_backend("keras")
    names = [list(inspect.signature(getattr(b, verb)).parameters) for b in (torch_backend, keras_backend)]
    if verb == "measure_latency":  # the torch twin adds options (devices)
        assert names[1] == [n for n in names[0] if n in names[1]]
    else:
        assert names[0] == names[1]


def test_both_backends_satisfy_the_protocol():
    assert all(isinstance(load_backend(f), Backend) for f in ("torch", "keras"))


def test_every_keras_training_handler_exists_in_its_backend():
    for method in list_methods(framework="keras"):
        if method.kind in ("unstructured", "structured"):
            assert callable(method.handler("keras"))


def test_keras_backend_prune_channels_checks_the_pruned_model_on_the_data_like_torch():
    import keras
    import numpy as np

    from prunekit.errors import ConfigError

    backend = load_backend("keras")
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)])
    x = np.random.default_rng(0).normal(size=(20, 6)).astype("float32")
    result = backend.prune_channels(model, x, 0.5)
    assert result.model.layers[0].units == 4
    assert result.model(x[:8]).shape == (8, 3)
    with pytest.raises(ConfigError, match="example_inputs"):  # the data reaches the pruned-model check
        backend.prune_channels(model, x[:, :5], 0.5)
