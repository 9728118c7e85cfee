"""TFLite models (converted from a tiny Keras 3 model) through the LiteRT runtime and the server."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
httpx = pytest.importorskip("httpx")

from prunekit.serve.model_info import inspect_model  # noqa: E402
from prunekit.serve.runtimes import TensorSpec, load_runtime  # noqa: E402
from tests.serve.live import LiveServer  # noqa: E402

X = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)


@pytest.fixture(scope="module")
def keras_and_tflite(tmp_path_factory):
    """A Keras model whose first kernel has 12 of its 24 entries zeroed, and its TFLite file."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,), name="features")
    outputs = keras.layers.Dense(2)(keras.layers.Dense(6, activation="relu")(inputs))
    model = keras.Model(inputs, outputs)
    kernel = model.layers[1].kernel.numpy()
    kernel.flat[:12] = 0.0
    model.layers[1].kernel.assign(kernel)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flatbuffer = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    root = tmp_path_factory.mktemp("tflite_models")
    path = root / "clf" / "1" / "model.tflite"
    path.parent.mkdir(parents=True)
    path.write_bytes(flatbuffer)
    return model, path


def direct_litert(path, x: np.ndarray) -> np.ndarray:
    """The reference: the LiteRT interpreter called directly through the model's signature."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = tf.lite.Interpreter
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = Interpreter(model_path=str(path))
    return interpreter.get_signature_runner()(features=x)["output_0"]


def test_tflite_runtime_names_tensors_after_the_signature(keras_and_tflite):
    _, path = keras_and_tflite
    runtime = load_runtime(path)
    assert runtime.format == "tflite"
    assert runtime.inputs == (TensorSpec("features", (None, 4), np.dtype("float32")),)
    assert runtime.outputs == (TensorSpec("output_0", (None, 2), np.dtype("float32")),)


def test_tflite_runtime_matches_keras_for_any_batch_size(keras_and_tflite):
    model, path = keras_and_tflite
    runtime = load_runtime(path)
    for rows in (1, 3, 1):
        got = runtime.run({"features": X[:rows]})["output_0"]
        np.testing.assert_allclose(got, model(X[:rows]).numpy(), atol=1e-5)


def test_tflite_sparsity_is_measured_from_the_flatbuffer(keras_and_tflite):
    _, path = keras_and_tflite
    info = inspect_model(path, "tflite")
    assert info.weight_sparsity == pytest.approx(12 / 36, abs=1e-6) and info.quantization == "none"


def test_server_predictions_on_tflite_equal_the_interpreter_run_directly(keras_and_tflite):
    _, path = keras_and_tflite
    with LiveServer(path.parent.parent.parent, "--poll-interval", "0") as server:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            rows = http.post("/v1/models/clf:predict", json={"instances": X.tolist()})
            columns = http.post("/v1/models/clf:predict", json={"inputs": {"features": X.tolist()}})
            metadata = http.get("/v1/models/clf/metadata").json()["metadata"]
    expected = direct_litert(path, X)
    assert rows.status_code == 200 and columns.status_code == 200
    np.testing.assert_array_equal(np.asarray(rows.json()["predictions"], np.float32), expected)
    np.testing.assert_array_equal(np.asarray(columns.json()["outputs"], np.float32), expected)
    assert metadata["format"] == "tflite"
    assert metadata["signature_def"]["inputs"] == [{"name": "features", "dtype": "float32", "shape": [-1, 4]}]
