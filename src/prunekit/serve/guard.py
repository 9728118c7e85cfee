"""What the server checks before a model file reaches a runtime: its signature, and its decryption.

:class:`ArtifactGuard` reads a model file once into memory, verifies its Ed25519 signature
(``model.onnx.sig``) when a public key is configured, decrypts ``model.onnx.enc`` /
``model.tflite.enc`` with the configured AES-256-GCM key, and hands the runtime exactly those
verified bytes: the plaintext never touches the disk, and a file swapped after the check is not
the file that is served. A model that fails is refused (its version shows ``END`` with the
reason) and the versions already serving keep serving.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunekit.errors import ConfigError

ENCRYPTED_SUFFIX = ".enc"


@dataclass(frozen=True)
class ArtifactGuard:
    """Signature and encryption settings of a model repository (both off by default).

    ``public_key`` is an Ed25519 public key (PEM bytes): every model file must then carry a valid
    signature. ``encryption_key`` is the 32-byte AES key for ``*.enc`` model files.

    Example::

        guard = ArtifactGuard(public_key=Path("signing.pub.pem").read_bytes())
        content = guard.read(Path("models/mlp/1/model.onnx"))   # verified bytes, or SignatureError
    """

    public_key: bytes | None = field(default=None, repr=False)
    encryption_key: bytes | None = field(default=None, repr=False)

    @property
    def active(self) -> bool:
        """Whether model files are read through the guard (a key of either kind is set)."""
        return self.public_key is not None or self.encryption_key is not None

    def _public(self) -> Any:
        from cryptography.hazmat.primitives import serialization  # the 'secure' extra; checked by the config

        return serialization.load_pem_public_key(self.public_key) if self.public_key is not None else None

    def read(self, path: Path) -> bytes | None:
        """The bytes a runtime should load for ``path`` (None: load ``path`` itself, nothing to check).

        Raises :class:`~prunekit.artifacts.signing.SignatureError` or
        :class:`~prunekit.artifacts.signing.DecryptionError` naming the file, and
        :class:`~prunekit.errors.ConfigError` for an encrypted file without a key.
        """
        from prunekit.artifacts import signing

        encrypted = path.name.endswith(ENCRYPTED_SUFFIX)
        if encrypted and self.encryption_key is None:
            raise ConfigError(f"{path} is encrypted but the server has no encryption key (--encryption-key-file/-env)")
        if not self.active:
            return None
        if (
            path.with_name(path.name + ".data").exists()
            or path.with_name(path.name.removesuffix(ENCRYPTED_SUFFIX) + ".data").exists()
        ):
            raise ConfigError(
                f"{path} keeps its weights in an external .data file; signed or encrypted serving loads a "
                "self-contained model from memory (export it without external data)"
            )
        content = path.read_bytes()
        if self.public_key is not None:
            signing.verify_file(path, self._public(), content=content)
        if encrypted:
            assert self.encryption_key is not None
            content = signing.decrypt_bytes(content, self.encryption_key, str(path))
        return content
