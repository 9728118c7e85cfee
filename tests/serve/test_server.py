"""End to end: a real `prunekit serve` process on 127.0.0.1, called over HTTP with httpx."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.serve.live import LiveServer, ort_run, place

X = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
IDS = np.array([[1, 2], [3, 4], [9, 0]], dtype=np.int64)
BODY_LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory, onnx_models):
    root = tmp_path_factory.mktemp("served")
    place(root, "mlp", 1, onnx_models["mlp_v1"])
    place(root, "mlp", 2, onnx_models["mlp_v2"], metadata={"sparsity": 0.5, "quantization": "none"})
    place(root, "two_heads", 1, onnx_models["two_heads"])
    with LiveServer(
        root, "--keep-versions", "all", "--max-body-bytes", "64K", "--batch-timeout-ms", "25", "--poll-interval", "0"
    ) as live:
        yield live


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


def metric(client, series: str) -> float:
    """The value of one series, written ``name{label="value",...}`` (label order free), parsed as Prometheus does."""
    name, _, rest = series.partition("{")
    labels = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    families = text_string_to_metric_families(client.get("/metrics").text)
    values = [s.value for f in families for s in f.samples if s.name == name and s.labels == labels]
    return float(values[0]) if values else 0.0


def test_healthz_lists_the_loaded_models(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok", "models": ["mlp", "two_heads"]}


def test_row_format_predictions_equal_onnxruntime(client, onnx_models):
    response = client.post("/v1/models/mlp:predict", json={"instances": X.tolist()})
    assert response.status_code == 200 and response.headers["x-model-version"] == "2"
    np.testing.assert_array_equal(
        np.asarray(response.json()["predictions"], np.float32), ort_run(onnx_models["mlp_v2"], {"x": X})["y"]
    )


def test_columnar_format_outputs_equal_onnxruntime(client, onnx_models):
    response = client.post("/v1/models/mlp:predict", json={"inputs": {"x": X.tolist()}})
    assert response.status_code == 200
    np.testing.assert_array_equal(
        np.asarray(response.json()["outputs"], np.float32), ort_run(onnx_models["mlp_v2"], {"x": X})["y"]
    )


def test_version_route_serves_that_version(client, onnx_models):
    response = client.post("/v1/models/mlp/versions/1:predict", json={"instances": X.tolist()})
    assert response.status_code == 200 and response.headers["x-model-version"] == "1"
    np.testing.assert_array_equal(
        np.asarray(response.json()["predictions"], np.float32), ort_run(onnx_models["mlp_v1"], {"x": X})["y"]
    )


def test_several_inputs_and_outputs_in_row_format_give_one_object_per_row(client, onnx_models):
    instances = [{"x": x.tolist(), "ids": i.tolist()} for x, i in zip(X, IDS)]
    response = client.post("/v1/models/two_heads:predict", json={"instances": instances})
    expected = ort_run(onnx_models["two_heads"], {"x": X, "ids": IDS})
    predictions = response.json()["predictions"]
    assert [sorted(p) for p in predictions] == [["logits", "score"]] * 3
    np.testing.assert_array_equal(np.asarray([p["logits"] for p in predictions], np.float32), expected["logits"])
    np.testing.assert_array_equal(np.asarray([p["score"] for p in predictions], np.float32), expected["score"])


def test_several_inputs_and_outputs_in_columnar_format_give_named_outputs(client, onnx_models):
    response = client.post("/v1/models/two_heads:predict", json={"inputs": {"x": X.tolist(), "ids": IDS.tolist()}})
    expected = ort_run(onnx_models["two_heads"], {"x": X, "ids": IDS})
    outputs = response.json()["outputs"]
    np.testing.assert_array_equal(np.asarray(outputs["logits"], np.float32), expected["logits"])
    np.testing.assert_array_equal(np.asarray(outputs["score"], np.float32), expected["score"])


def test_status_lists_versions_in_tensorflow_serving_format(client):
    assert client.get("/v1/models/mlp").json() == {
        "model_version_status": [
            {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
        ]
    }
    assert [s["version"] for s in client.get("/v1/models/mlp/versions/1").json()["model_version_status"]] == ["1"]


def test_metadata_reports_tensors_size_sparsity_and_quantization(client, onnx_models):
    body = client.get("/v1/models/mlp/metadata").json()
    assert body["model_spec"] == {"name": "mlp", "signature_name": "serving_default", "version": "2"}
    meta = body["metadata"]
    assert meta["format"] == "onnx" and meta["path"] == "mlp/2/model.onnx"
    assert meta["signature_def"] == {
        "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, 3]}],
    }
    assert meta["size"]["file_bytes"] == onnx_models["mlp_v2"].stat().st_size
    assert meta["sparsity"] == {"measured": 0.5, "declared": 0.5}
    assert meta["quantization"] == {"measured": "none", "declared": "none"}


BAD_REQUESTS = [
    # (id, method, path, body bytes or JSON, status, fragment of the error message)
    ("malformed_json", "/v1/models/mlp:predict", b'{"instances": [[1, 2', 400, "malformed JSON body"),
    ("wrong_shape", "/v1/models/mlp:predict", {"instances": [[1, 2, 3]]}, 400, "expected shape [-1, 4]"),
    ("wrong_dtype", "/v1/models/mlp:predict", {"instances": [["a", "b", "c", "d"]]}, 400, "expected float32 values, got strings"),
    (
        "non_integer_ids",
        "/v1/models/two_heads:predict",
        {"inputs": {"x": [[0, 0, 0, 0]], "ids": [[1.5, 2]]}},
        400,
        "input 'ids': expected int64 values, got the non-integer 1.5",
    ),
    ("nan", "/v1/models/mlp:predict", b'{"instances": [[1, NaN, 3, 4]]}', 400, "NaN or infinity at index [0, 1]"),
    ("missing_field", "/v1/models/mlp:predict", {"rows": [[1, 2, 3, 4]]}, 400, "unknown field(s) ['rows']"),
    ("oversized_body", "/v1/models/mlp:predict", b"[" + b"0," * BODY_LIMIT + b"0]", 413, "exceeds the limit of 65536 bytes"),
    ("unknown_model", "/v1/models/nope:predict", {"instances": [[1, 2, 3, 4]]}, 404, "model 'nope' not found"),
    (
        "unknown_version",
        "/v1/models/mlp/versions/9:predict",
        {"instances": [[1, 2, 3, 4]]},
        404,
        "model 'mlp' has no loaded version 9; loaded versions: [1, 2]",
    ),
    (
        "bad_version",
        "/v1/models/mlp/versions/latest:predict",
        {"instances": [[1, 2, 3, 4]]},
        400,
        "version must be a non-negative integer, got 'latest'",
    ),
]


@pytest.mark.parametrize(
    "path, body, status, message", [case[1:] for case in BAD_REQUESTS], ids=[case[0] for case in BAD_REQUESTS]
)
def test_bad_request_gets_its_4xx_and_a_json_error(client, path, body, status, message):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = client.post(path, content=content, headers={"content-type": "application/json"})
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert message in response.json()["error"]


def test_server_keeps_serving_after_every_bad_request(client, onnx_models):
    for _, path, body, _, _ in BAD_REQUESTS:
        client.post(path, content=body if isinstance(body, bytes) else json.dumps(body).encode())
    response = client.post("/v1/models/mlp:predict", json={"instances": X.tolist()})
    assert response.status_code == 200
    np.testing.assert_array_equal(
        np.asarray(response.json()["predictions"], np.float32), ort_run(onnx_models["mlp_v2"], {"x": X})["y"]
    )


def test_unknown_route_gets_a_json_404(client):
    response = client.get("/v2/whatever")
    assert response.status_code == 404 and "no route GET /v2/whatever" in response.json()["error"]


def test_get_on_a_predict_route_gets_405(client):
    response = client.get("/v1/models/mlp:predict")
    assert response.status_code == 405 and "takes POST" in response.json()["error"]


def test_request_id_is_echoed(client):
    response = client.get("/healthz", headers={"x-request-id": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"


def test_concurrent_requests_are_stacked_into_fewer_inference_calls(server, onnx_models):
    prefix = 'prunekit_serve_batch_size_{}{{model="mlp",version="2"}}'
    with httpx.Client(base_url=server.url, timeout=30) as http:
        calls_before, rows_before = metric(http, prefix.format("count")), metric(http, prefix.format("sum"))
    expected = ort_run(onnx_models["mlp_v2"], {"x": X})["y"]

    def one(i: int) -> np.ndarray:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            response = http.post("/v1/models/mlp:predict", json={"instances": [X[i % 3].tolist()]})
            assert response.status_code == 200
            return np.asarray(response.json()["predictions"], np.float32)[0]

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(one, range(24)))
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result, expected[i % 3])
    with httpx.Client(base_url=server.url, timeout=30) as http:
        calls = metric(http, prefix.format("count")) - calls_before
        rows = metric(http, prefix.format("sum")) - rows_before
    assert rows == 24 and calls < 24


def test_metrics_count_requests_errors_and_latency(client):
    client.post("/v1/models/mlp:predict", json={"instances": [[1, 2, 3]]})
    client.post("/v1/models/mlp:predict", json={"instances": [[1, 2, 3, 4]]})
    assert client.get("/metrics").headers["content-type"] == prometheus_client.CONTENT_TYPE_LATEST
    assert metric(client, 'prunekit_serve_requests_total{endpoint="predict",model="mlp",code="200"}') >= 1
    assert metric(client, 'prunekit_serve_errors_total{endpoint="predict",model="mlp",code="400"}') >= 1
    assert metric(client, 'prunekit_serve_request_duration_seconds_count{endpoint="predict",model="mlp"}') >= 2
    assert metric(client, 'prunekit_serve_model_latest_version{model="mlp"}') == 2


def test_unknown_model_names_do_not_become_metric_labels(client):
    client.post("/v1/models/made-up-name:predict", json={"instances": [[1, 2, 3, 4]]})
    text = client.get("/metrics").text
    assert "made-up-name" not in text
    assert metric(client, 'prunekit_serve_errors_total{endpoint="predict",model="",code="404"}') >= 1


def test_logs_are_json_lines_with_one_access_entry_per_request(client, server):
    client.post("/v1/models/mlp:predict", json={"instances": [[1, 2, 3, 4]]}, headers={"x-request-id": "log-check-1"})
    entries = server.wait_for_logs(request_id="log-check-1")
    lines = [line for line in server.lines if line.strip()]
    assert all(line.startswith("{") for line in lines)
    assert len(entries) == 1
    entry = entries[0]
    assert {k: entry[k] for k in ("level", "msg", "method", "path", "status", "model", "version", "rows")} == {
        "level": "info",
        "msg": "request",
        "method": "POST",
        "path": "/v1/models/mlp:predict",
        "status": 200,
        "model": "mlp",
        "version": 2,
        "rows": 1,
    }
