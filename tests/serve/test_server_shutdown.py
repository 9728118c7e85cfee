"""End to end: SIGTERM lets in-flight requests finish, then the server exits cleanly."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np

from tests.serve.live import LiveServer, ort_run, place, wait_for


def test_sigterm_finishes_in_flight_requests_then_exits_zero(tmp_path, onnx_models):
    place(tmp_path, "mlp", 1, onnx_models["mlp_v1"])
    x = np.ones((1, 4), np.float32)
    server = LiveServer(tmp_path, "--batch-timeout-ms", "1500", "--max-batch-size", "64", "--poll-interval", "0")
    server.start()
    try:
        answers: list[httpx.Response] = []

        def request() -> None:
            answers.append(httpx.post(server.url + "/v1/models/mlp:predict", json={"instances": x.tolist()}, timeout=30))

        thread = threading.Thread(target=request)
        thread.start()
        time.sleep(0.5)  # the request now waits in its batch for 1.5 s
        assert not answers
        code = server.stop()
        thread.join(30)
    finally:
        server.kill()
    assert code == 0
    assert answers[0].status_code == 200
    np.testing.assert_array_equal(
        np.asarray(answers[0].json()["predictions"], np.float32), ort_run(onnx_models["mlp_v1"], {"x": x})["y"]
    )
    messages = [e["msg"] for e in server.logs()]
    assert messages.index("server stopped") > messages.index("Shutting down")
    wait_for(lambda: server.process.poll() is not None)
