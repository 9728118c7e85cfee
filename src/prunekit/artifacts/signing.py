"""Signed and encrypted artifacts: Ed25519 signatures and AES-256-GCM encryption at rest (``cryptography``).

**Signatures.** ``sign_file("model.onnx", key)`` writes ``model.onnx.sig`` beside it: a small
JSON document holding the SHA-256 of the file (and of its ``.data`` external-data companion, if
any) and an Ed25519 signature over them. ``verify_file("model.onnx", public_key)`` recomputes
the digests and checks the signature; one changed byte, a swapped companion or another key
raises :class:`SignatureError` naming the file.

**Encryption.** ``encrypt_file("model.onnx", key)`` writes ``model.onnx.enc``: an 8-byte magic,
a random 12-byte nonce and the AES-256-GCM ciphertext with its 16-byte tag (the magic and the
original file name are authenticated too). ``decrypt_bytes`` returns the plaintext in memory
only; a wrong key, a truncated or tampered file raises :class:`DecryptionError`.

**Keys never travel on a command line.** An Ed25519 private key is a PKCS#8 PEM file, a public
key a SubjectPublicKeyInfo PEM file; an encryption key is 32 random bytes, stored as 64 hex
digits. Each comes from a key file or an environment variable (:data:`SIGNING_KEY_ENV`,
:data:`PUBLIC_KEY_ENV`, :data:`ENCRYPTION_KEY_ENV`) holding the same text.

Example::

    generate_signing_key("signing.pem")               # also writes signing.pub.pem
    sign_file("model.onnx", load_private_key("signing.pem"))
    verify_file("model.onnx", load_public_key("signing.pub.pem"))
    write_encryption_key("model.key")
    encrypt_file("model.onnx", load_encryption_key("model.key"))
    plaintext = decrypt_bytes(Path("model.onnx.enc").read_bytes(), load_encryption_key("model.key"), "model.onnx.enc")
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

from prunekit.artifacts.profile import profile_files_for
from prunekit.core.atomic import atomic_write_bytes
from prunekit.core.optional import require
from prunekit.errors import ConfigError, CorruptFileError

SIGNATURE_SUFFIX = ".sig"
ENCRYPTED_SUFFIX = ".enc"
SIGNATURE_FORMAT = "prunekit.signature"
SIGNING_KEY_ENV = "PRUNEKIT_SIGNING_KEY"
PUBLIC_KEY_ENV = "PRUNEKIT_PUBLIC_KEY"
ENCRYPTION_KEY_ENV = "PRUNEKIT_ENCRYPTION_KEY"
_MAGIC = b"PKENC\x00\x01\x00"  # format name and version 1
_NONCE_BYTES = 12
_TAG_BYTES = 16
_CONTEXT = b"prunekit.signature.v1\n"


class SignatureError(CorruptFileError):
    """A signature is missing, malformed, made with another key, or does not match the file."""


class DecryptionError(CorruptFileError):
    """An encrypted file cannot be decrypted: wrong key, truncated or tampered."""


def _crypto() -> Any:
    return require("cryptography.hazmat.primitives.asymmetric.ed25519", "secure")


def _serialization() -> Any:
    return require("cryptography.hazmat.primitives.serialization", "secure")


# --------------------------------------------------------------------------- keys


def _key_text(key_file: str | os.PathLike[str] | None, env: str, what: str) -> bytes:
    if key_file is not None:
        path = Path(key_file)
        if not path.is_file():
            raise ConfigError(f"{what} file {path} does not exist")
        return path.read_bytes()
    value = os.environ.get(env)
    if not value:
        raise ConfigError(f"no {what}: give a key file, or set the environment variable {env}")
    return value.encode()


def _write_secret(path: Path, data: bytes) -> None:
    """Create ``path`` readable by its owner only from the first byte (never another mode, never over a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def generate_signing_key(path: str | os.PathLike[str], public_path: str | os.PathLike[str] | None = None) -> Path:
    """Write a new Ed25519 private key (PEM, mode 0600) to ``path`` and its public key beside it; returns the public key path.

    The public key goes to ``public_path`` (default: ``path`` with ``.pub.pem``). Refuses to overwrite a key.

    Example::

        generate_signing_key("signing.pem")   # PosixPath('signing.pub.pem')
    """
    ed25519, serialization = _crypto(), _serialization()
    target = Path(path)
    public = Path(public_path) if public_path is not None else target.with_name(target.name.removesuffix(".pem") + ".pub.pem")
    for existing in (target, public):
        if existing.exists():
            raise ConfigError(f"{existing} already exists; a key is never overwritten (remove it first if you mean to)")
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_secret(target, private_pem)
    atomic_write_bytes(public, public_pem)
    return public


def load_private_key(key_file: str | os.PathLike[str] | None = None) -> Any:
    """The Ed25519 private key in ``key_file`` (PEM), else in ``$PRUNEKIT_SIGNING_KEY``.

    Example::

        key = load_private_key("signing.pem")
    """
    ed25519, serialization = _crypto(), _serialization()
    text = _key_text(key_file, SIGNING_KEY_ENV, "signing key")
    try:
        key = serialization.load_pem_private_key(text, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"the signing key ({key_file or '$' + SIGNING_KEY_ENV}) is not an unencrypted PEM private key: {exc}"
        ) from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError(f"the signing key ({key_file or '$' + SIGNING_KEY_ENV}) is a {type(key).__name__}, not an Ed25519 key")
    return key


def load_public_key(key_file: str | os.PathLike[str] | None = None) -> Any:
    """The Ed25519 public key in ``key_file`` (PEM), else in ``$PRUNEKIT_PUBLIC_KEY``.

    Example::

        public = load_public_key("signing.pub.pem")
    """
    ed25519, serialization = _crypto(), _serialization()
    text = _key_text(key_file, PUBLIC_KEY_ENV, "public key")
    try:
        key = serialization.load_pem_public_key(text)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"the public key ({key_file or '$' + PUBLIC_KEY_ENV}) is not a PEM public key: {exc}") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ConfigError(f"the public key ({key_file or '$' + PUBLIC_KEY_ENV}) is a {type(key).__name__}, not an Ed25519 key")
    return key


def key_id(public_key: Any) -> str:
    """A short fingerprint of a public key (first 16 hex digits of the SHA-256 of its raw bytes)."""
    serialization = _serialization()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def write_encryption_key(path: str | os.PathLike[str]) -> Path:
    """Write a new random 256-bit key (64 hex digits, mode 0600) to ``path``; refuses to overwrite one.

    Example::

        write_encryption_key("model.key")
    """
    target = Path(path)
    if target.exists():
        raise ConfigError(f"{target} already exists; a key is never overwritten (remove it first if you mean to)")
    _write_secret(target, secrets.token_hex(32).encode() + b"\n")
    return target


def load_encryption_key(key_file: str | os.PathLike[str] | None = None, env: str = ENCRYPTION_KEY_ENV) -> bytes:
    """The 32-byte AES key in ``key_file``, else in the environment variable ``env`` (64 hex digits or base64).

    Example::

        key = load_encryption_key("model.key")
    """
    text = _key_text(key_file, env, "encryption key").strip()
    where = key_file or "$" + env
    key: bytes | None = None
    try:
        key = bytes.fromhex(text.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        try:
            key = base64.b64decode(text, validate=True)
        except ValueError:
            key = None
    if key is None or len(key) != 32:
        raise ConfigError(f"the encryption key ({where}) should be 32 bytes written as 64 hex digits (or base64)")
    return key


# --------------------------------------------------------------------------- signatures


def _companions(path: Path) -> list[Path]:
    """The file, the ``.data`` external-data file of an ONNX model and the reference profiles beside it, if present.

    The profile is signed with the model: a server that verifies signatures must not judge drift
    against a profile someone swapped (a tampered profile could hide drift)."""
    data = path.with_name(path.name + ".data")
    return [path, *([data] if data.is_file() else []), *profile_files_for(path)]


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _message(files: dict[str, str]) -> bytes:
    return _CONTEXT + json.dumps(files, sort_keys=True, separators=(",", ":")).encode()


def signature_path(path: str | os.PathLike[str]) -> Path:
    """Where the signature of ``path`` lives: ``path`` + ``.sig``."""
    target = Path(path)
    return target.with_name(target.name + SIGNATURE_SUFFIX)


def sign_file(path: str | os.PathLike[str], private_key: Any) -> Path:
    """Sign ``path`` (and its ``.data`` companion, if any) with an Ed25519 key; writes and returns ``path.sig``.

    Example::

        sign_file("models/mlp/1/model.onnx", load_private_key("signing.pem"))
    """
    target = Path(path)
    if not target.is_file():
        raise ConfigError(f"cannot sign {target}: no such file")
    files = {p.name: _digest(p) for p in _companions(target)}
    signature = private_key.sign(_message(files))
    document = {
        "format": SIGNATURE_FORMAT,
        "version": 1,
        "algorithm": "ed25519",
        "key_id": key_id(private_key.public_key()),
        "files": files,
        "signature": base64.b64encode(signature).decode(),
    }
    out = signature_path(target)
    atomic_write_bytes(out, (json.dumps(document, indent=1) + "\n").encode())
    return out


def verify_file(path: str | os.PathLike[str], public_key: Any, *, content: bytes | None = None) -> dict[str, Any]:
    """Check ``path.sig`` against ``path`` (and companions); returns the signature document, else :class:`SignatureError`.

    With ``content`` (the bytes of ``path`` already read), those bytes are what is checked, so a
    caller can verify and then use exactly the verified bytes.

    Example::

        verify_file("models/mlp/1/model.onnx", load_public_key("signing.pub.pem"))
    """
    exceptions = require("cryptography.exceptions", "secure")
    target = Path(path)
    sig = signature_path(target)
    if not sig.is_file():
        raise SignatureError(f"{target} has no signature ({sig.name} is missing); sign it with `prunekit sign {target.name}`")
    try:
        document = json.loads(sig.read_text(encoding="utf-8"))
        files = document["files"]
        signature = base64.b64decode(document["signature"], validate=True)
        ok_format = document.get("format") == SIGNATURE_FORMAT and document.get("algorithm") == "ed25519"
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise SignatureError(f"{sig} is not a prunekit signature file (malformed JSON or fields)") from None
    if not ok_format or not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise SignatureError(f"{sig} is not a prunekit Ed25519 signature (format {document.get('format')!r})")
    try:
        public_key.verify(signature, _message(files))
    except exceptions.InvalidSignature:
        raise SignatureError(
            f"{sig}: the signature does not verify with the configured public key (key {key_id(public_key)}; "
            f"signed by key {document.get('key_id', '?')}), or the signature file was altered"
        ) from None
    expected = {p.name for p in _companions(target)}
    if set(files) != expected:
        raise SignatureError(
            f"{sig} covers {sorted(files)} but beside it are {sorted(expected)} (its .data file and reference profiles are "
            "signed with it); sign the model again"
        )
    for name, digest in files.items():
        actual = (
            hashlib.sha256(content).hexdigest() if content is not None and name == target.name else _digest(target.parent / name)
        )
        if actual != digest:
            raise SignatureError(
                f"{target.parent / name} does not match its signature (SHA-256 differs): the file changed after signing"
            )
    return document


# --------------------------------------------------------------------------- encryption


def _aead(key: bytes) -> Any:
    aead = require("cryptography.hazmat.primitives.ciphers.aead", "secure")
    if not isinstance(key, bytes) or len(key) != 32:
        raise ConfigError("an AES-256-GCM key is 32 bytes (see load_encryption_key)")
    return aead.AESGCM(key)


def encrypt_bytes(plaintext: bytes, key: bytes, name: str = "") -> bytes:
    """``plaintext`` encrypted with AES-256-GCM: magic + nonce + ciphertext + tag; ``name`` is authenticated too.

    Example::

        blob = encrypt_bytes(b"weights", key, "model.onnx")
    """
    nonce = secrets.token_bytes(_NONCE_BYTES)
    return _MAGIC + nonce + _aead(key).encrypt(nonce, plaintext, _MAGIC + name.encode())


def decrypt_bytes(blob: bytes, key: bytes, where: str = "encrypted data", name: str | None = None) -> bytes:
    """The plaintext of :func:`encrypt_bytes` output, in memory; :class:`DecryptionError` naming ``where`` otherwise.

    ``name`` is the original file name the blob was encrypted under (default: ``where``'s name
    without ``.enc``).

    Example::

        decrypt_bytes(Path("model.onnx.enc").read_bytes(), key, "model.onnx.enc")
    """
    exceptions = require("cryptography.exceptions", "secure")
    if name is None:
        name = Path(where).name.removesuffix(ENCRYPTED_SUFFIX)
    if len(blob) < len(_MAGIC) + _NONCE_BYTES + _TAG_BYTES:
        raise DecryptionError(f"{where} is {len(blob)} bytes, too short to be a prunekit encrypted file (truncated?)")
    if blob[: len(_MAGIC)] != _MAGIC:
        raise DecryptionError(f"{where} is not a prunekit encrypted file (or a newer version of the format)")
    nonce = blob[len(_MAGIC) : len(_MAGIC) + _NONCE_BYTES]
    try:
        return bytes(_aead(key).decrypt(nonce, blob[len(_MAGIC) + _NONCE_BYTES :], _MAGIC + name.encode()))
    except exceptions.InvalidTag:
        raise DecryptionError(
            f"{where} does not decrypt: wrong key, or the file was truncated, tampered with or renamed from {name!r}"
        ) from None


def encrypt_file(path: str | os.PathLike[str], key: bytes, out: str | os.PathLike[str] | None = None) -> Path:
    """Encrypt ``path`` to ``out`` (default ``path.enc``), atomically; the original is left in place.

    Example::

        encrypt_file("model.onnx", load_encryption_key("model.key"))   # model.onnx.enc
    """
    source = Path(path)
    if not source.is_file():
        raise ConfigError(f"cannot encrypt {source}: no such file")
    target = Path(out) if out is not None else source.with_name(source.name + ENCRYPTED_SUFFIX)
    if target.resolve() == source.resolve():
        raise ConfigError(f"{target} would overwrite the file being encrypted; choose another output")
    atomic_write_bytes(target, encrypt_bytes(source.read_bytes(), key, target.name.removesuffix(ENCRYPTED_SUFFIX)))
    return target


def decrypt_file(path: str | os.PathLike[str], key: bytes, out: str | os.PathLike[str] | None = None) -> Path:
    """Decrypt ``path`` (``X.enc``) to ``out`` (default ``X``), atomically; nothing is written when it fails.

    Example::

        decrypt_file("model.onnx.enc", load_encryption_key("model.key"))   # model.onnx
    """
    source = Path(path)
    if not source.is_file():
        raise ConfigError(f"cannot decrypt {source}: no such file")
    if out is None and not source.name.endswith(ENCRYPTED_SUFFIX):
        raise ConfigError(f"{source} does not end with {ENCRYPTED_SUFFIX}; say where the plaintext goes (--out)")
    target = Path(out) if out is not None else source.with_name(source.name.removesuffix(ENCRYPTED_SUFFIX))
    if target.resolve() == source.resolve():
        raise ConfigError(f"{target} would overwrite the encrypted file; choose another output")
    atomic_write_bytes(target, decrypt_bytes(source.read_bytes(), key, str(source)))
    return target


__all__ = [
    "DecryptionError",
    "SignatureError",
    "decrypt_bytes",
    "decrypt_file",
    "encrypt_bytes",
    "encrypt_file",
    "generate_signing_key",
    "key_id",
    "load_encryption_key",
    "load_private_key",
    "load_public_key",
    "sign_file",
    "signature_path",
    "verify_file",
    "write_encryption_key",
]
