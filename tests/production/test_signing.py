"""Ed25519 signatures and AES-256-GCM encryption of artifacts: one changed byte is always caught."""

from __future__ import annotations

import base64
import json
import os
import stat

import pytest

pytest.importorskip("cryptography")

from prunekit.artifacts import signing  # noqa: E402
from prunekit.artifacts.signing import DecryptionError, SignatureError  # noqa: E402
from prunekit.cli import main  # noqa: E402
from prunekit.errors import ConfigError, CorruptFileError  # noqa: E402

PAYLOAD = bytes(range(256)) * 40


@pytest.fixture
def keys(tmp_path):
    public = signing.generate_signing_key(tmp_path / "signing.pem")
    return signing.load_private_key(tmp_path / "signing.pem"), signing.load_public_key(public)


def _artifact(tmp_path, name="model.onnx"):
    path = tmp_path / name
    path.write_bytes(PAYLOAD)
    return path


def test_a_signed_file_verifies(tmp_path, keys):
    path = _artifact(tmp_path)
    assert signing.sign_file(path, keys[0]) == tmp_path / "model.onnx.sig"
    document = signing.verify_file(path, keys[1])
    assert document["files"] == {"model.onnx": __import__("hashlib").sha256(PAYLOAD).hexdigest()}


@pytest.mark.parametrize("position", [0, 1000, len(PAYLOAD) - 1])
def test_one_flipped_byte_in_a_signed_file_is_rejected(tmp_path, keys, position):
    path = _artifact(tmp_path)
    signing.sign_file(path, keys[0])
    data = bytearray(PAYLOAD)
    data[position] ^= 0x04
    path.write_bytes(bytes(data))
    with pytest.raises(SignatureError, match="model.onnx does not match its signature"):
        signing.verify_file(path, keys[1])


def test_a_tampered_signature_or_another_key_is_rejected(tmp_path, keys):
    path = _artifact(tmp_path)
    sig = signing.sign_file(path, keys[0])
    other = signing.load_public_key(signing.generate_signing_key(tmp_path / "other.pem"))
    with pytest.raises(SignatureError, match="does not verify with the configured public key"):
        signing.verify_file(path, other)
    document = json.loads(sig.read_text())
    raw = bytearray(base64.b64decode(document["signature"]))
    raw[5] ^= 0x01
    sig.write_text(json.dumps({**document, "signature": base64.b64encode(bytes(raw)).decode()}))
    with pytest.raises(SignatureError, match="does not verify"):
        signing.verify_file(path, keys[1])
    sig.write_text("{not json")
    with pytest.raises(SignatureError, match="not a prunekit signature file"):
        signing.verify_file(path, keys[1])
    sig.unlink()
    with pytest.raises(SignatureError, match="has no signature"):
        signing.verify_file(path, keys[1])


def test_the_signature_covers_the_external_data_file(tmp_path, keys):
    path = _artifact(tmp_path)
    data = tmp_path / "model.onnx.data"
    data.write_bytes(b"weights")
    signing.sign_file(path, keys[0])
    data.write_bytes(b"weightz")
    with pytest.raises(SignatureError, match="model.onnx.data does not match its signature"):
        signing.verify_file(path, keys[1])


@pytest.mark.parametrize("profile_name", ["model.onnx.profile.json", "profile.json"])
def test_the_signature_covers_the_reference_profile(tmp_path, keys, profile_name):
    path = _artifact(tmp_path)
    profile = tmp_path / profile_name
    profile.write_text('{"format": "prunekit-reference-profile"}')
    document = signing.verify_file(signing.sign_file(path, keys[0]).with_suffix(""), keys[1])
    assert set(document["files"]) == {"model.onnx", profile_name}
    profile.write_text('{"format": "prunekit-reference-profile", "x": 1}')  # a swapped profile could hide drift
    with pytest.raises(SignatureError, match=f"{profile_name} does not match its signature"):
        signing.verify_file(path, keys[1])
    profile.unlink()
    with pytest.raises(SignatureError, match="sign the model again"):
        signing.verify_file(path, keys[1])


def test_a_profile_added_after_signing_is_refused(tmp_path, keys):
    path = _artifact(tmp_path)
    signing.sign_file(path, keys[0])
    (tmp_path / "profile.json").write_text("{}")
    with pytest.raises(SignatureError, match=r"beside it are \['model.onnx', 'profile.json'\]"):
        signing.verify_file(path, keys[1])


def test_encrypt_decrypt_round_trip_and_key_file_mode(tmp_path):
    key_file = signing.write_encryption_key(tmp_path / "model.key")
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    key = signing.load_encryption_key(key_file)
    encrypted = signing.encrypt_file(_artifact(tmp_path), key)
    blob = encrypted.read_bytes()
    assert encrypted.name == "model.onnx.enc" and PAYLOAD[:64] not in blob and len(blob) == len(PAYLOAD) + 8 + 12 + 16
    assert signing.decrypt_bytes(blob, key, str(encrypted)) == PAYLOAD


@pytest.mark.parametrize("position", [0, 10, 25, 500, -1])
def test_one_flipped_byte_in_an_encrypted_file_is_rejected(tmp_path, position):
    key = bytes(range(32))
    blob = bytearray(signing.encrypt_bytes(PAYLOAD, key, "model.onnx"))
    blob[position] ^= 0x01
    with pytest.raises(DecryptionError):
        signing.decrypt_bytes(bytes(blob), key, "model.onnx.enc")


def test_wrong_key_truncated_and_renamed_files_are_rejected_naming_the_file(tmp_path):
    key = bytes(range(32))
    blob = signing.encrypt_bytes(PAYLOAD, key, "model.onnx")
    with pytest.raises(DecryptionError, match="m/model.onnx.enc does not decrypt: wrong key"):
        signing.decrypt_bytes(blob, bytes(32), "m/model.onnx.enc")
    with pytest.raises(DecryptionError, match="too short"):
        signing.decrypt_bytes(blob[:20], key, "model.onnx.enc")
    with pytest.raises(DecryptionError, match="does not decrypt"):
        signing.decrypt_bytes(blob[:-1], key, "model.onnx.enc")
    with pytest.raises(DecryptionError, match="renamed from 'other.onnx'"):
        signing.decrypt_bytes(blob, key, "other.onnx.enc")
    assert issubclass(DecryptionError, CorruptFileError)


def test_a_failed_decryption_writes_nothing(tmp_path):
    key = bytes(range(32))
    encrypted = signing.encrypt_file(_artifact(tmp_path, "w.bin"), key)
    (tmp_path / "w.bin").unlink()
    with pytest.raises(DecryptionError):
        signing.decrypt_file(encrypted, bytes(32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.bin.enc"]


def test_keys_come_from_env_or_file_and_bad_keys_are_named(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_ENCRYPTION_KEY", "ab" * 32)
    assert signing.load_encryption_key() == bytes([0xAB]) * 32
    monkeypatch.setenv("PRUNEKIT_ENCRYPTION_KEY", "abc")
    with pytest.raises(ConfigError, match=r"\$PRUNEKIT_ENCRYPTION_KEY\) should be 32 bytes"):
        signing.load_encryption_key()
    monkeypatch.delenv("PRUNEKIT_ENCRYPTION_KEY")
    with pytest.raises(ConfigError, match="set the environment variable PRUNEKIT_ENCRYPTION_KEY"):
        signing.load_encryption_key()
    signing.generate_signing_key(tmp_path / "k.pem")
    monkeypatch.setenv("PRUNEKIT_SIGNING_KEY", (tmp_path / "k.pem").read_text())
    assert signing.key_id(signing.load_private_key().public_key()) == signing.key_id(
        signing.load_public_key(tmp_path / "k.pub.pem")
    )
    with pytest.raises(ConfigError, match="already exists"):
        signing.generate_signing_key(tmp_path / "k.pem")


def test_cli_sign_verify_encrypt_decrypt(tmp_path, capsys, monkeypatch):
    path = _artifact(tmp_path)
    assert main(["sign", "--generate-key", str(tmp_path / "s.pem")]) == 0
    assert main(["sign", str(path), "--key-file", str(tmp_path / "s.pem")]) == 0
    assert main(["verify", str(path), "--public-key", str(tmp_path / "s.pub.pem")]) == 0
    assert "signature OK" in capsys.readouterr().out
    path.write_bytes(PAYLOAD[:-1] + b"\x00")
    assert main(["verify", str(path), "--public-key", str(tmp_path / "s.pub.pem")]) == 2
    assert "does not match its signature" in capsys.readouterr().err
    path.write_bytes(PAYLOAD)
    assert main(["encrypt", "--generate-key", str(tmp_path / "e.key")]) == 0
    monkeypatch.setenv("PRUNEKIT_ENCRYPTION_KEY", (tmp_path / "e.key").read_text())
    assert main(["encrypt", str(path), "--remove-plaintext"]) == 0 and not path.exists()
    assert main(["decrypt", str(tmp_path / "model.onnx.enc")]) == 0
    assert path.read_bytes() == PAYLOAD


def test_the_cli_takes_no_key_material_as_an_argument():
    from prunekit.cli import build_parser

    for command in ("sign", "verify", "encrypt", "decrypt"):
        parser = build_parser([command])
        sub = parser._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]
        flags = [o for action in sub._actions for o in action.option_strings]
        assert not any(flag in ("--key", "--password", "--secret", "--encryption-key") for flag in flags)
