"""The server under faults: a slow inference times out with a 504, a full queue answers 503 with
Retry-After, and no request body — however malformed — gets anything but a JSON 200 or 4xx (a
Hypothesis fuzz over bodies)."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prunekit.serve.config import ServeConfig

pytest.importorskip("onnxruntime")


class _Slow:
    """A runtime that blocks until released, to hold an inference past the request timeout."""

    def __init__(self, runtime) -> None:
        self.runtime = runtime
        self.format, self.inputs, self.outputs = runtime.format, runtime.inputs, runtime.outputs
        self.release = threading.Event()

        self.entered = threading.Event()

    def run(self, feeds):
        self.entered.set()
        self.release.wait(10)
        return self.runtime.run(feeds)


def _server(models, **options):
    from prunekit.serve.app import ModelServer

    server = ModelServer(ServeConfig(model_dir=models, poll_interval_s=0, access_log=False, **options))
    server.load_models()
    return server


def test_a_predict_past_the_request_timeout_is_answered_504_and_the_server_goes_on(tmp_path, onnx_models):
    from starlette.testclient import TestClient

    from tests.serve.live import place

    place(tmp_path, "mlp", 1, onnx_models["mlp_v1"])
    server = _server(tmp_path, request_timeout_s=0.2)
    model = server.repository.get("mlp")
    slow = model.runtime = _Slow(model.runtime)
    with TestClient(server.app) as client:
        started = time.perf_counter()
        timed_out = client.post("/v1/models/mlp:predict", json={"instances": [[1, 2, 3, 4]]})
        waited = time.perf_counter() - started
        slow.release.set()
        after = client.post("/v1/models/mlp:predict", json={"instances": [[1, 2, 3, 4]]})
    assert timed_out.status_code == 504 and waited < 5
    assert "no answer within the request timeout of 0.2 s" in timed_out.json()["error"] and "'mlp'" in timed_out.json()["error"]
    expected = slow.runtime.run({"x": np.array([[1, 2, 3, 4]], np.float32)})["y"]
    assert after.status_code == 200 and np.allclose(after.json()["predictions"], expected, atol=1e-6)


def test_a_full_queue_is_answered_503_with_retry_after_and_the_queued_requests_still_succeed(tmp_path, onnx_models):
    from starlette.testclient import TestClient

    from tests.serve.live import place

    place(tmp_path, "mlp", 1, onnx_models["mlp_v1"])
    server = _server(tmp_path, batching=False, inference_threads=1, max_queued_requests=1)
    model = server.repository.get("mlp")
    slow = model.runtime = _Slow(model.runtime)
    body = {"instances": [[1, 2, 3, 4]]}
    with TestClient(server.app) as client:
        answers: dict = {}
        running = threading.Thread(target=lambda: answers.setdefault("running", client.post("/v1/models/mlp:predict", json=body)))
        running.start()
        assert slow.entered.wait(5)  # the one inference thread is busy
        queued = threading.Thread(target=lambda: answers.setdefault("queued", client.post("/v1/models/mlp:predict", json=body)))
        queued.start()
        deadline = time.monotonic() + 5
        while server._batchers[model].queued < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        refused = client.post("/v1/models/mlp:predict", json=body)
        slow.release.set()
        running.join(5)
        queued.join(5)
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
    assert "model 'mlp' version 1: 1 requests are already queued" in refused.json()["error"]
    assert [answers[name].status_code for name in ("running", "queued")] == [200, 200]


def test_request_timeout_must_be_positive():
    from prunekit.errors import ConfigError

    with pytest.raises(ConfigError, match="request_timeout_s should be >= 0.001, got 0"):
        ServeConfig(model_dir=".", request_timeout_s=0)


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
)
_values = st.recursive(
    _scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=30
)
_rows = st.lists(
    st.lists(st.one_of(st.floats(width=32, allow_nan=False, allow_infinity=False), st.integers(-10, 10)), min_size=3, max_size=5),
    min_size=1,
    max_size=4,
)
_bodies = st.one_of(
    _values.map(json.dumps),  # any JSON at all
    st.fixed_dictionaries({"instances": _values}).map(json.dumps),
    st.fixed_dictionaries({"inputs": st.one_of(_values, st.fixed_dictionaries({"x": _values, "ids": _values}))}).map(json.dumps),
    st.fixed_dictionaries({"instances": _rows}).map(json.dumps),  # near misses: rows of 3-5 numbers
    st.fixed_dictionaries({"instances": st.lists(st.fixed_dictionaries({"x": _rows, "ids": _values}), max_size=3)}).map(
        json.dumps
    ),
    st.binary(max_size=40).map(lambda b: b.decode("latin-1")),  # not JSON
    st.sampled_from(
        ['{"instances": [[NaN, 1, 2, 3]]}', '{"instances": [[Infinity, 1, 2, 3]]}', '{"instances": [[1e400, 0, 0, 0]]}']
    ),
)


@pytest.fixture(scope="module")
def fuzz_client(tmp_path_factory, onnx_models):
    from starlette.testclient import TestClient

    from tests.serve.live import place

    models = tmp_path_factory.mktemp("fuzz")
    place(models, "mlp", 1, onnx_models["mlp_v1"])
    place(models, "two_heads", 1, onnx_models["two_heads"])
    with TestClient(_server(models, max_body_bytes=4096).app) as client:
        yield client


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=_bodies, model=st.sampled_from(["mlp", "two_heads"]))
def test_any_request_body_gets_a_json_200_or_4xx(fuzz_client, body, model):
    response = fuzz_client.post(f"/v1/models/{model}:predict", content=body.encode("utf-8", "surrogatepass"))
    assert response.status_code == 200 or 400 <= response.status_code < 500, (response.status_code, response.text)
    payload = response.json()
    if response.status_code == 200:
        assert set(payload) in ({"predictions"}, {"outputs"})
    else:
        assert isinstance(payload["error"], str) and payload["error"]
