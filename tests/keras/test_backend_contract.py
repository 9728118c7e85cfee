"""The two backends implement the contract's verbs with the same names and parameters."""

import inspect

import pytest

from prunekit.methods import Backend, list_methods, load_backend

VERBS = [
    "is_model",
    "clone",
    "fit",
    "predict",
    "accuracy",
    "summarize",
    "measure",
    "measure_latency",
    "measure_sparse_runtime",
    "export",
    "load_weights",
    "save",
    "layers",
    "serialized_size",
    "measure_peak_memory",
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


@pytest.mark.parametrize("framework", ["torch", "keras"])
def test_save_layers_size_and_memory_verbs_agree_across_backends(framework, tmp_path):
    import numpy as np

    from prunekit.core.records import MemoryResult

    backend = load_backend(framework)
    if framework == "torch":
        from prunekit.torch import DigitsMLP as factory
    else:
        from prunekit.keras import digits_mlp as factory
    model = factory()
    x = np.random.default_rng(0).normal(size=(16, 8, 8) if framework == "torch" else (16, 8, 8, 1)).astype("float32")
    y = np.arange(16) % 10
    if framework == "keras":
        model(x[:1])
    assert backend.layers(model) == ["fc1", "fc2", "fc3"]
    size = backend.serialized_size(model)
    assert set(size) == {"raw_bytes", "gzip_bytes"} and size["raw_bytes"] > 4 * (64 * 128 + 128 * 64 + 64 * 10)
    memory = backend.measure_peak_memory(model, x, batch_size=4)
    assert isinstance(memory, MemoryResult) and memory.batch_size == 4
    assert memory.weight_bytes == 4 * (64 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10)
    file = backend.save(model, tmp_path / "mlp")
    assert file.startswith(str(tmp_path / "mlp")) and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    again = backend.load_weights(file, factory)
    assert backend.accuracy(again, x, y) == backend.accuracy(model, x, y)
    reloaded = np.asarray(again(x) if framework == "keras" else again(__import__("torch").as_tensor(x)).detach())
    original = np.asarray(model(x) if framework == "keras" else model(__import__("torch").as_tensor(x)).detach())
    np.testing.assert_array_equal(reloaded, original)


def test_one_accuracy_class_serves_both_backends_and_refuses_other_objects():
    import keras
    import numpy as np
    import torch

    import prunekit.keras as pk
    import prunekit.torch as pt
    from prunekit.errors import ConfigError

    assert pt.Accuracy is pk.Accuracy
    x = np.random.default_rng(1).normal(size=(40, 6)).astype("float32")
    y = np.arange(40) % 3
    dense = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
    linear = torch.nn.Linear(6, 3)
    with torch.no_grad():  # the same weights: both backends must agree image for image
        linear.weight.copy_(torch.as_tensor(np.asarray(dense.layers[0].kernel).T))
        linear.bias.copy_(torch.as_tensor(np.asarray(dense.layers[0].bias)))
    expected = float((x @ np.asarray(dense.layers[0].kernel) + np.asarray(dense.layers[0].bias)).argmax(-1).__eq__(y).mean())
    metric = pt.Accuracy(x, y, batch_size=7)  # batches that do not divide the samples
    linear.train()
    assert metric(linear) == pytest.approx(expected) and metric(dense) == pytest.approx(expected)
    assert linear.training  # the training mode is restored
    with pytest.raises(ConfigError, match="not a model of any backend"):
        metric(object())
