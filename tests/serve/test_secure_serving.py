"""The server serves only models whose signature verifies, and decrypts encrypted models in memory only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cryptography")

from prunekit.artifacts import signing  # noqa: E402
from prunekit.errors import ConfigError  # noqa: E402
from prunekit.serve.config import ServeConfig  # noqa: E402
from tests.serve.live import ort_run, place  # noqa: E402

X = [[1.0, 2.0, 3.0, 4.0]]


@pytest.fixture
def signer(tmp_path):
    public = signing.generate_signing_key(tmp_path / "keys" / "s.pem")
    return signing.load_private_key(tmp_path / "keys" / "s.pem"), public.read_bytes()


def _server(models: Path, **keys):
    from prunekit.serve.app import ModelServer

    server = ModelServer(ServeConfig(model_dir=models, poll_interval_s=0, **keys))
    report = server.repository.sync(initial=True)
    return server, report


def _status(server, name):
    return {s.version: (s.state, s.error or s.message) for s in server.repository.status(name)}


def test_a_signed_model_is_served_and_a_tampered_one_refused(tmp_path, onnx_models, signer):
    models = tmp_path / "models"
    good = place(models, "mlp", 1, onnx_models["mlp_v1"])
    signing.sign_file(good, signer[0])
    bad = place(models, "mlp", 2, onnx_models["mlp_v2"])
    signing.sign_file(bad, signer[0])
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0x01
    bad.write_bytes(bytes(data))
    unsigned = place(models, "other", 1, onnx_models["mlp_v1"])
    server, _ = _server(models, public_key=signer[1])
    assert server.repository.names() == ["mlp"]
    assert server.repository.get("mlp").version == 1  # version 2 refused, version 1 keeps serving
    state, message = _status(server, "mlp")[2]
    assert state == "END" and "model.onnx does not match its signature" in message
    assert "has no signature" in _status(server, "other")[1][1]
    assert unsigned.exists()


def test_without_a_public_key_signatures_are_not_required(tmp_path, onnx_models):
    models = tmp_path / "models"
    place(models, "mlp", 1, onnx_models["mlp_v1"])
    server, _ = _server(models)
    assert server.repository.names() == ["mlp"]


def test_an_encrypted_signed_model_is_decrypted_in_memory_and_predicts_like_the_plain_one(tmp_path, onnx_models, signer):
    models = tmp_path / "models"
    plain = place(models, "mlp", 1, onnx_models["mlp_v1"])
    key = bytes(range(32))
    encrypted = signing.encrypt_file(plain, key)
    plain.unlink()
    signing.sign_file(encrypted, signer[0])
    server, _ = _server(models, public_key=signer[1], encryption_key=key)
    loaded = server.repository.get("mlp")
    outputs = loaded.runtime.run({"x": np.asarray(X, np.float32)})
    expected = ort_run(onnx_models["mlp_v1"], {"x": np.asarray(X, np.float32)})
    np.testing.assert_array_equal(outputs["y"], expected["y"])
    assert loaded.info.size_bytes == onnx_models["mlp_v1"].stat().st_size
    assert sorted(p.name for p in (models / "mlp" / "1").iterdir()) == ["model.onnx.enc", "model.onnx.enc.sig"]


def test_an_encrypted_model_with_a_wrong_or_missing_key_is_refused(tmp_path, onnx_models):
    models = tmp_path / "models"
    plain = place(models, "mlp", 1, onnx_models["mlp_v1"])
    signing.encrypt_file(plain, bytes(range(32)))
    plain.unlink()
    server, _ = _server(models, encryption_key=bytes(32))
    assert server.repository.names() == []
    assert "does not decrypt: wrong key" in _status(server, "mlp")[1][1]
    server, _ = _server(models)
    assert "is encrypted but the server has no encryption key" in _status(server, "mlp")[1][1]


def test_bad_key_settings_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="public_key is not a PEM public key"):
        ServeConfig(model_dir=tmp_path, public_key=b"nope")
    with pytest.raises(ConfigError, match="encryption_key should be 32 bytes"):
        ServeConfig(model_dir=tmp_path, encryption_key=b"short")
