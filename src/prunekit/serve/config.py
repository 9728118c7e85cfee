"""Settings of ``prunekit serve``, validated all at once before anything starts."""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from prunekit.errors import ConfigError
from prunekit.serve.jsonlog import LEVELS


@dataclass(frozen=True)
class DriftSettings:
    """How drift is watched: window rows, rows needed before scoring, thresholds, kept predictions.

    Example::

        DriftSettings(window=2000, psi_threshold=0.2, min_accuracy=0.9)
    """

    window: int = 1000
    min_rows: int = 100
    psi_threshold: float = 0.25
    ks_threshold: float = 0.3
    share_threshold: float = 0.3
    min_accuracy: float | None = None
    kept_predictions: int = 4096
    flush_rows: int = 64

    def __post_init__(self) -> None:
        problems = []
        if self.window < 2:
            problems.append(f"drift window should be >= 2 rows, got {self.window}")
        if not 1 <= self.min_rows <= self.window:
            problems.append(f"drift min_rows should be in [1, window={self.window}], got {self.min_rows}")
        for name in ("psi_threshold", "ks_threshold"):
            if not getattr(self, name) > 0:
                problems.append(f"drift {name} should be > 0, got {getattr(self, name)}")
        if not 0 < self.share_threshold <= 1:
            problems.append(f"drift share_threshold should be in (0, 1], got {self.share_threshold}")
        if self.min_accuracy is not None and not 0 <= self.min_accuracy <= 1:
            problems.append(f"drift min_accuracy should be in [0, 1], got {self.min_accuracy}")
        if self.flush_rows < 1:
            problems.append(f"drift flush_rows should be >= 1, got {self.flush_rows}")
        if self.kept_predictions < 0:
            problems.append(f"drift kept_predictions should be >= 0, got {self.kept_predictions}")
        if problems:
            raise ConfigError("invalid drift settings: " + "; ".join(problems))


@dataclass(frozen=True)
class ServeConfig:
    """How the server runs. Every field is checked in the constructor; all problems are reported
    in one :class:`~prunekit.errors.ConfigError`.

    - ``keep_versions``: how many of each model's highest versions stay loaded (0: all).
    - ``max_batch_size`` / ``batch_timeout_ms``: micro-batching; ``batching=False`` runs each
      request alone. ``inference_threads`` batches run at once per model;
      ``intra_op_threads`` threads each (0: the runtime's default).
    - ``poll_interval_s``: how often the model directory is scanned for new versions (0: never).
    - ``request_timeout_s``: a predict waiting longer than this for its inference is answered 504
      (the inference itself cannot be interrupted; its result is dropped).
    - ``token``: the bearer token (from :func:`prunekit.serve.auth.load_token`); ``None``: no auth.
    - ``insecure``: allow a non-loopback ``host`` without a token (refused otherwise).
    - ``public_key``: an Ed25519 public key (PEM bytes); every model must then carry a valid ``.sig``.
    - ``encryption_key``: the 32-byte AES-256-GCM key for ``model.onnx.enc``/``model.tflite.enc`` files.
    - ``drift_monitoring`` / ``drift``: watch the inputs and outputs of every version that has a
      ``profile.json`` beside it (:mod:`prunekit.serve.drift`), with the window and thresholds of ``drift``.

    Example::

        ServeConfig(model_dir=Path("models"), port=8501, max_batch_size=16)
    """

    model_dir: Path
    host: str = "127.0.0.1"
    port: int = 8501
    keep_versions: int = 1
    batching: bool = True
    max_batch_size: int = 32
    batch_timeout_ms: float = 2.0
    inference_threads: int = 2
    intra_op_threads: int = 1
    max_queued_requests: int = 1024
    max_body_bytes: int = 8 * 1024 * 1024
    allow_nonfinite: bool = False
    poll_interval_s: float = 2.0
    token: bytes | None = field(default=None, repr=False)
    access_log: bool = True
    log_level: str = "info"
    shutdown_timeout_s: float = 30.0
    request_timeout_s: float = 60.0
    insecure: bool = False
    public_key: bytes | None = field(default=None, repr=False)
    encryption_key: bytes | None = field(default=None, repr=False)
    drift_monitoring: bool = True
    drift: DriftSettings = field(default_factory=DriftSettings)

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_dir", Path(self.model_dir))
        problems = []
        minimums = {
            "port": 0,
            "keep_versions": 0,
            "max_batch_size": 1,
            "batch_timeout_ms": 0.0,
            "inference_threads": 1,
            "intra_op_threads": 0,
            "max_queued_requests": 1,
            "max_body_bytes": 1,
            "poll_interval_s": 0.0,
            "shutdown_timeout_s": 0.0,
            "request_timeout_s": 0.001,
        }
        for name, minimum in minimums.items():
            value = getattr(self, name)
            if value < minimum:
                problems.append(f"{name} should be >= {minimum}, got {value}")
        if self.port > 65535:
            problems.append(f"port should be <= 65535, got {self.port}")
        if self.log_level not in LEVELS:
            problems.append(f"log_level should be one of {list(LEVELS)}, got {self.log_level!r}")
        if not self.host:
            problems.append("host should not be empty")
        elif self.token is None and not self.insecure and not is_loopback(self.host):
            problems.append(
                f"host {self.host!r} is reachable from other machines but no bearer token is set; set one "
                "(--token-env/--token-file) or, on a trusted network only, pass --insecure (insecure=True)"
            )
        problems += _key_problems(self.public_key, self.encryption_key)
        if problems:
            raise ConfigError("invalid serve settings: " + "; ".join(problems))

    @property
    def auth_enabled(self) -> bool:
        """True when requests need a bearer token."""
        return self.token is not None

    def summary(self) -> dict[str, object]:
        """The settings as loggable JSON values, without the token."""
        secret = ("token", "public_key", "encryption_key")
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in secret}
        values["signed_models"] = self.public_key is not None
        values["encrypted_models"] = self.encryption_key is not None
        values["model_dir"] = str(self.model_dir)
        values["drift"] = asdict(self.drift)
        values["auth"] = self.auth_enabled
        return values


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (``localhost``, 127.0.0.0/8, ``::1``).

    Example::

        is_loopback("0.0.0.0")   # False
    """
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _key_problems(public_key: bytes | None, encryption_key: bytes | None) -> list[str]:
    """Why the configured keys cannot be used (an empty list when they can)."""
    if public_key is None and encryption_key is None:
        return []
    if importlib.util.find_spec("cryptography") is None:
        return ["signed or encrypted models need the cryptography package: pip install 'prunekit[secure]'"]
    problems = []
    if public_key is not None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            key = serialization.load_pem_public_key(public_key)
        except (ValueError, TypeError) as exc:
            problems.append(f"public_key is not a PEM public key ({exc})")
        else:
            if not isinstance(key, Ed25519PublicKey):
                problems.append(f"public_key is a {type(key).__name__}, not an Ed25519 key")
    if encryption_key is not None and len(encryption_key) != 32:
        problems.append(f"encryption_key should be 32 bytes (AES-256), got {len(encryption_key)}")
    return problems
