"""Drift monitoring end to end: a digits classifier (PyTorch -> ONNX, Keras -> TFLite) is profiled on
its training digits, served in process, and fed held-out, noisy and rotated digits."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from prunekit.data import load_digits
from prunekit.serve.config import DriftSettings, ServeConfig
from prunekit.serve.profiling import profile_artifact

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
pytest.importorskip("onnxruntime")
pytest.importorskip("prometheus_client")

ROTATE = (2, 3)  # spatial axes of NCHW digits


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def _train_torch(split):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    x, y = torch.as_tensor(split.x_train), torch.as_tensor(split.y_train)
    for _ in range(150):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def torch_dir(tmp_path_factory, digits):
    """models/digits/1/model.onnx with its profile (made on the validation digits) beside it."""
    from prunekit.torch.deploy.export import export_onnx

    root = tmp_path_factory.mktemp("torch_models")
    path = root / "digits" / "1" / "model.onnx"
    path.parent.mkdir(parents=True)
    export_onnx(_train_torch(digits), __import__("torch").as_tensor(digits.x_train[:2]), path, input_names=["x"])
    profile_artifact(path, digits.x_val, digits.y_val)
    return root


@pytest.fixture(scope="module")
def keras_dir(tmp_path_factory, digits):
    """models/digits/1/model.tflite (a Keras model on NHWC digits) with its profile beside it."""
    keras = pytest.importorskip("keras")
    pytest.importorskip("tensorflow")
    from prunekit.keras.deploy.tflite import convert_to_tflite

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1), name="x")
    hidden = keras.layers.Dense(32, activation="relu")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(hidden))
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="sparse_categorical_crossentropy")
    model.fit(_nhwc(digits.x_train), digits.y_train, epochs=15, batch_size=128, verbose=0)
    root = tmp_path_factory.mktemp("keras_models")
    path = root / "digits" / "1" / "model.tflite"
    path.parent.mkdir(parents=True)
    convert_to_tflite(model, output_path=path)
    profile_artifact(path, _nhwc(digits.x_val), digits.y_val)
    return root


def _nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(x, 1, -1))


FRAMEWORKS = {"torch": ("torch_dir", lambda x: x), "keras": ("keras_dir", _nhwc)}


def _client(root: Path, **drift):
    from starlette.testclient import TestClient

    from prunekit.serve.app import ModelServer

    server = ModelServer(ServeConfig(model_dir=root, poll_interval_s=0, access_log=False, drift=DriftSettings(**drift)))
    server.load_models()
    return TestClient(server.app)


def _input_name(client) -> str:
    return client.get("/v1/models/digits/metadata").json()["metadata"]["signature_def"]["inputs"][0]["name"]


def _serve(client, images: np.ndarray, rows: int = 8) -> list[str]:
    name = _input_name(client)
    ids = []
    for start in range(0, len(images), rows):
        response = client.post(
            "/v1/models/digits:predict",
            json={"inputs": {name: images[start : start + rows].tolist()}},
            headers={"X-Request-ID": f"r{start}"},
        )
        assert response.status_code == 200, response.text
        ids.append(f"r{start}")
    return ids


def _noisy(x: np.ndarray) -> np.ndarray:
    return np.clip(x + np.random.default_rng(0).normal(0, 0.25, x.shape), 0, 1).astype(np.float32)


def _rotated(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(x, 1, axes=ROTATE))


@pytest.mark.parametrize("framework", list(FRAMEWORKS))
def test_held_out_digits_score_near_zero_drift(request, framework, digits):
    fixture, layout = FRAMEWORKS[framework]
    with _client(request.getfixturevalue(fixture)) as client:
        _serve(client, layout(digits.x_test))
        report = client.get("/v1/models/digits/drift").json()
    (scores,) = report["inputs"].values()
    assert report["window_rows"] == len(digits.x_test) and report["ready"]
    assert scores["features"] == 64 and scores["drifted_features"] == 0
    assert scores["max_psi"] < 0.15 and scores["mean_psi"] < 0.04 and scores["max_ks"] < 0.15
    (output,) = report["outputs"].values()
    assert output["class_psi"] < 0.1 and output["confidence_psi"] < 0.1
    assert report["alerts"] == []


@pytest.mark.parametrize("framework", list(FRAMEWORKS))
@pytest.mark.parametrize("shift", [_noisy, _rotated], ids=["noise", "rotation"])
def test_shifted_digits_cross_the_input_threshold(request, framework, shift, digits):
    fixture, layout = FRAMEWORKS[framework]
    with _client(request.getfixturevalue(fixture)) as client:
        _serve(client, layout(shift(digits.x_test)))
        report = client.get("/v1/models/digits/drift").json()
    ((name, scores),) = report["inputs"].items()
    assert scores["drift_share"] >= report["thresholds"]["share"] == 0.3
    assert scores["max_psi"] > 1.0
    assert f"input:{name}" in [alert["alert"] for alert in report["alerts"]]


@pytest.mark.parametrize("framework", list(FRAMEWORKS))
def test_rotated_digits_shift_the_predicted_classes(request, framework, digits):
    fixture, layout = FRAMEWORKS[framework]
    with _client(request.getfixturevalue(fixture)) as client:
        _serve(client, layout(_rotated(digits.x_test)))
        report = client.get("/v1/models/digits/drift").json()
    ((output, scores),) = report["outputs"].items()
    assert scores["class_psi"] > 0.25
    assert f"classes:{output}" in [alert["alert"] for alert in report["alerts"]]


def test_crossing_a_threshold_logs_one_structured_warning(torch_dir, digits, caplog):
    with caplog.at_level(logging.INFO, logger="prunekit.serve.drift"), _client(torch_dir, window=200, min_rows=50) as client:
        _serve(client, _noisy(digits.x_test))
    crossed = [r for r in caplog.records if r.getMessage() == "drift threshold crossed" and r.alert == "input:x"]
    assert len(crossed) == 1
    assert crossed[0].levelno == logging.WARNING and crossed[0].model == "digits" and crossed[0].version == 1
    assert crossed[0].score >= crossed[0].threshold == 0.3


def test_the_window_forgets_old_rows(torch_dir, digits):
    """After clean traffic fills the window, the earlier noisy rows no longer count."""
    with _client(torch_dir, window=200, min_rows=50) as client:
        _serve(client, _noisy(digits.x_test[:200]))
        assert client.get("/v1/models/digits/drift").json()["alerts"]
        _serve(client, digits.x_test[:200])
        report = client.get("/v1/models/digits/drift").json()
    assert report["rows_seen"] == 400 and 100 <= report["window_rows"] <= 200
    assert report["alerts"] == [] and report["inputs"]["x"]["drifted_features"] == 0


def test_feedback_labels_give_the_windowed_accuracy(torch_dir, digits):
    x, y = digits.x_test[:64], digits.y_test[:64]
    with _client(torch_dir, min_rows=10, min_accuracy=0.99) as client:
        predictions = []
        for start in range(0, 64, 8):
            response = client.post(
                "/v1/models/digits:predict",
                json={"instances": x[start : start + 8].tolist()},
                headers={"X-Request-ID": f"q{start}"},
            )
            predictions.append(np.argmax(response.json()["predictions"], axis=1))
        correct = 0
        for start in range(0, 64, 8):
            answer = client.post(
                "/v1/models/digits/feedback", json={"request_id": f"q{start}", "labels": y[start : start + 8].tolist()}
            )
            assert answer.status_code == 200, answer.text
            correct += answer.json()["correct"]
        report = client.get("/v1/models/digits/drift").json()
        again = client.post("/v1/models/digits/feedback", json={"request_id": "q0", "labels": y[:8].tolist()})
        short = client.post("/v1/models/digits/feedback", json={"request_id": "q8", "labels": [1]})
    expected = int((np.concatenate(predictions) == y).sum())
    assert correct == expected
    assert report["accuracy"]["labelled_rows"] == 64 and report["accuracy"]["accuracy"] == pytest.approx(expected / 64)
    assert report["accuracy"]["reference_accuracy"] > 0.9
    assert ("accuracy" in [a["alert"] for a in report["alerts"]]) == (expected / 64 < 0.99)
    assert again.status_code == 404 and "'q0'" in again.json()["error"]  # each prediction is labelled once
    assert short.status_code in (400, 404)


def test_feedback_with_the_wrong_label_count_names_labels(torch_dir, digits):
    with _client(torch_dir) as client:
        _serve(client, digits.x_test[:8])
        answer = client.post("/v1/models/digits/feedback", json={"request_id": "r0", "labels": [1, 2]})
        not_ints = client.post("/v1/models/digits/feedback", json={"request_id": "r0", "labels": ["a"]})
    assert answer.status_code == 400 and "'labels' has 2 entries" in answer.json()["error"]
    assert not_ints.status_code == 400 and "'labels'" in not_ints.json()["error"]


def test_metrics_parse_with_prometheus_clients_parser(torch_dir, digits):
    from prometheus_client.parser import text_string_to_metric_families

    with _client(torch_dir) as client:
        _serve(client, _noisy(digits.x_test))
        text = client.get("/metrics").text
        report = client.get("/v1/models/digits/drift").json()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    (share,) = families["prunekit_drift_input_drift_share"].samples
    assert share.labels == {"model": "digits", "version": "1", "input": "x"}
    assert share.value == pytest.approx(report["inputs"]["x"]["drift_share"])
    (max_psi,) = families["prunekit_drift_input_max_psi"].samples
    assert max_psi.value == pytest.approx(report["inputs"]["x"]["max_psi"])
    assert len(families["prunekit_drift_feature_psi"].samples) == 64
    assert families["prunekit_drift_window_rows"].samples[0].value == len(digits.x_test)
    assert families["prunekit_drift_alerts"].samples[0].value == len(report["alerts"]) >= 1
    assert "prunekit_serve_requests" in families  # the server's own metrics parse too


def test_a_model_without_a_profile_is_not_watched(tmp_path, torch_dir):
    from tests.serve.live import place

    place(tmp_path, "plain", 1, torch_dir / "digits" / "1" / "model.onnx")
    with _client(tmp_path) as client:
        response = client.get("/v1/models/plain/drift")
    assert response.status_code == 404 and "no reference profile (plain/1/profile.json" in response.json()["error"]


def test_a_profile_of_another_model_refuses_the_version(tmp_path, torch_dir, onnx_models):
    from prunekit.serve.repository import ModelRepository
    from tests.serve.live import place

    place(tmp_path, "mlp", 1, onnx_models["mlp_v1"])
    (tmp_path / "mlp" / "1" / "profile.json").write_bytes((torch_dir / "digits" / "1" / "model.onnx.profile.json").read_bytes())
    report = ModelRepository(tmp_path).sync(initial=True)
    ((name, version, message),) = report.failed
    assert (name, version) == ("mlp", 1)
    assert "profile.json does not match the model" in message
    assert "input 'x' has sample shape [1, 8, 8] in the profile but [4] in the model" in message


def test_monitoring_memory_stays_bounded(torch_dir, digits):
    """Thousands of requests later the window holds counters only and keeps at most kept_predictions ids."""
    from prunekit.artifacts.profile import ReferenceProfile
    from prunekit.serve.drift import DriftMonitor
    from prunekit.serve.runtimes import load_runtime

    runtime = load_runtime(torch_dir / "digits" / "1" / "model.onnx")
    profile = ReferenceProfile.load(torch_dir / "digits" / "1" / "model.onnx.profile.json")
    monitor = DriftMonitor(
        profile, runtime.inputs, runtime.outputs, DriftSettings(window=100, min_rows=10, kept_predictions=50), "d", 1
    )
    watch = monitor.inputs["x"]
    shapes = (watch.window.older.shape, watch.window.newer.shape)
    x = digits.x_test[:2]
    logits = runtime.run({"x": x})
    for i in range(3000):
        monitor.observe({"x": x}, logits, f"id{i}")
    report = monitor.report()
    assert (watch.window.older.shape, watch.window.newer.shape) == shapes == ((64, 10), (64, 10))
    assert 50 <= report["window_rows"] <= 100 + 25 and report["rows_seen"] == 6000  # window + one flush (window // 4)
    assert len(monitor._predictions) == 50 and "id2999" in monitor._predictions and "id2949" not in monitor._predictions


def test_serve_command_line_sets_the_drift_settings(tmp_path):
    from prunekit.cli import build_parser
    from prunekit.commands.serve import build_config

    argv = ["serve", str(tmp_path), "--drift-window", "500", "--drift-min-rows", "50", "--drift-psi-threshold", "0.1"]
    argv += ["--drift-ks-threshold", "0.2", "--drift-share-threshold", "0.5", "--drift-min-accuracy", "0.9"]
    config = build_config(build_parser(argv).parse_args(argv))
    assert config.drift_monitoring and config.drift == DriftSettings(500, 50, 0.1, 0.2, 0.5, 0.9)
    off = ["serve", str(tmp_path), "--no-drift"]
    assert not build_config(build_parser(off).parse_args(off)).drift_monitoring


def test_bad_drift_settings_are_reported_together():
    from prunekit.errors import ConfigError

    with pytest.raises(ConfigError, match=r"min_rows should be in \[1, window=10\], got 100; drift psi_threshold should be > 0"):
        DriftSettings(window=10, psi_threshold=0)
