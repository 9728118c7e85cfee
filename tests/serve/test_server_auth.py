"""End to end: bearer-token auth on a real server (token read from a file)."""

from __future__ import annotations

import httpx
import pytest

from tests.serve.live import LiveServer, place

TOKEN = "s3cret-token-for-tests-0123456789"
PREDICT = "/v1/models/mlp:predict"
BODY = {"instances": [[1, 2, 3, 4]]}


@pytest.fixture(scope="module")
def client(tmp_path_factory, onnx_models):
    root = tmp_path_factory.mktemp("auth")
    place(root / "models", "mlp", 1, onnx_models["mlp_v1"])
    (root / "token").write_text(TOKEN + "\n")
    with LiveServer(root / "models", "--token-file", str(root / "token"), "--poll-interval", "0") as server:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            yield http


def test_request_without_a_token_gets_401_with_a_bearer_challenge(client):
    response = client.post(PREDICT, json=BODY)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="prunekit"'
    assert response.json()["error"].startswith("missing bearer token")


def test_request_with_a_wrong_token_gets_401(client):
    response = client.post(PREDICT, json=BODY, headers={"Authorization": "Bearer " + TOKEN[:-1] + "X"})
    assert response.status_code == 401 and response.json() == {"error": "invalid bearer token"}


def test_request_with_the_right_token_is_served(client):
    response = client.post(PREDICT, json=BODY, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200 and len(response.json()["predictions"][0]) == 3


def test_status_and_metrics_need_the_token_too(client):
    assert client.get("/v1/models/mlp").status_code == 401
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_healthz_needs_no_token(client):
    assert client.get("/healthz").status_code == 200
