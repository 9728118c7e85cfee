"""/healthz needs no token, but tells which models are served only to token holders."""

from __future__ import annotations

from pathlib import Path

from prunekit.serve.config import ServeConfig


def _app(models: Path, onnx: Path, token: bytes | None):
    from starlette.testclient import TestClient

    from prunekit.serve.app import ModelServer
    from tests.serve.live import place

    place(models, "secret_model", 1, onnx)
    server = ModelServer(ServeConfig(model_dir=models, token=token, poll_interval_s=0))
    server.load_models()
    return TestClient(server.app)


def test_healthz_lists_models_only_to_token_holders(tmp_path, onnx_models):
    token = b"s3cret-token-for-tests-0123456789"
    with _app(tmp_path / "models", onnx_models["mlp_v1"], token) as client:
        anonymous = client.get("/healthz")
        assert anonymous.status_code == 200 and anonymous.json() == {"status": "ok"}
        wrong = client.get("/healthz", headers={"Authorization": "Bearer nope"})
        assert wrong.json() == {"status": "ok"}
        holder = client.get("/healthz", headers={"Authorization": f"Bearer {token.decode()}"})
        assert holder.json() == {"status": "ok", "models": ["secret_model"]}


def test_healthz_without_auth_lists_models(tmp_path, onnx_models):
    with _app(tmp_path / "models", onnx_models["mlp_v1"], None) as client:
        assert client.get("/healthz").json() == {"status": "ok", "models": ["secret_model"]}
