"""End to end: hot reload under traffic on a real server polling its model directory."""

from __future__ import annotations

import os
import shutil
import threading
import time

import httpx
import numpy as np
import pytest

from tests.serve.live import LiveServer, ort_run, place, wait_for

X = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)


@pytest.fixture(scope="module")
def served(tmp_path_factory, onnx_models):
    root = tmp_path_factory.mktemp("reload")
    place(root, "mlp", 1, onnx_models["mlp_v1"])
    with LiveServer(root, "--poll-interval", "0.1", "--no-access-log") as server:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            yield root, server, http


def publish(root, name: str, version: int, source) -> None:
    """Copy into a hidden directory, then rename: the documented way to add a version atomically."""
    staging = root / name / f".incoming-{version}"
    staging.mkdir(parents=True)
    shutil.copy(source, staging / source.name)
    os.rename(staging, root / name / str(version))


def states(http, name: str) -> dict[str, str]:
    return {s["version"]: s["state"] for s in http.get(f"/v1/models/{name}").json()["model_version_status"]}


def test_reload_during_traffic_loses_no_request(served, onnx_models):
    root, server, http = served
    expected = {v: ort_run(onnx_models[f"mlp_v{v}"], {"x": X})["y"] for v in (1, 2)}
    results: list[tuple[int, str, object]] = []
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            deadline = time.monotonic() + 30
            for _ in range(2000):  # bounded in count and in time
                if stop.is_set() or time.monotonic() > deadline:
                    return
                response = client.post("/v1/models/mlp:predict", json={"instances": X.tolist()})
                body = response.json()
                results.append((response.status_code, response.headers.get("x-model-version", ""), body))

    threads = [threading.Thread(target=traffic) for _ in range(4)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(results) >= 20)
    publish(root, "mlp", 2, onnx_models["mlp_v2"])
    wait_for(lambda: states(http, "mlp") == {"2": "AVAILABLE", "1": "END"})
    seen = len(results)
    wait_for(lambda: len(results) >= seen + 20)
    stop.set()
    for thread in threads:
        thread.join(30)
    assert [r for r in results if r[0] != 200] == []
    assert {version for _, version, _ in results} == {"1", "2"}
    for _, version, body in results:
        np.testing.assert_array_equal(np.asarray(body["predictions"], np.float32), expected[int(version)])
    assert results[-1][1] == "2"


def test_broken_new_version_is_refused_and_the_old_one_keeps_serving(served, onnx_models):
    root, server, http = served
    serving = http.post("/v1/models/mlp:predict", json={"instances": X.tolist()}).headers["x-model-version"]
    publish(root, "mlp", 50, onnx_models["broken"])
    status = wait_for(
        lambda: next(
            (
                s
                for s in http.get("/v1/models/mlp").json()["model_version_status"]
                if s["version"] == "50" and s["state"] == "END"
            ),
            None,
        )
    )
    assert status["status"]["error_code"] == "UNKNOWN"
    assert "model 'mlp' version 50 refused: cannot load ONNX model" in status["status"]["error_message"]
    response = http.post("/v1/models/mlp:predict", json={"instances": X.tolist()})
    assert response.status_code == 200 and response.headers["x-model-version"] == serving
    refused = [e for e in server.logs() if e.get("msg") == "model version refused"]
    assert [(e["model"], e["version"], e["level"]) for e in refused] == [("mlp", 50, "error")]


def test_new_model_directory_is_picked_up(served, onnx_models):
    root, _, http = served
    publish(root, "two_heads", 1, onnx_models["two_heads"])
    wait_for(lambda: http.get("/healthz").json()["models"] == ["mlp", "two_heads"])
    response = http.post("/v1/models/two_heads:predict", json={"inputs": {"x": X.tolist(), "ids": [[0, 1], [2, 3]]}})
    assert response.status_code == 200 and sorted(response.json()["outputs"]) == ["logits", "score"]
