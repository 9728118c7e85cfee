"""``prunekit serve MODEL_DIR``: serve ONNX/TFLite models over HTTP in TensorFlow Serving's format.

Example::

    prunekit serve models/ --host 127.0.0.1 --port 8501 --max-batch-size 16
    curl -d '{"instances": [[1, 2, 3, 4]]}' http://127.0.0.1:8501/v1/models/demo:predict
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from prunekit.errors import ConfigError
from prunekit.serve.auth import DEFAULT_TOKEN_ENV, load_token
from prunekit.serve.config import DriftSettings, ServeConfig
from prunekit.serve.jsonlog import LEVELS

_DEFAULTS = ServeConfig(model_dir=Path("."))
_SIZE = re.compile(r"^(\d+)\s*(|k|kb|kib|m|mb|mib|g|gb|gib)$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_size(text: str) -> int:
    """Bytes from ``"8388608"``, ``"64KiB"`` or ``"8M"`` (binary units).

    Example::

        parse_size("8M")   # 8388608
    """
    match = _SIZE.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"expected a size such as 1048576, 512K or 8M, got {text!r}")
    return int(match.group(1)) * _UNITS[match.group(2)[:1].lower()]


def _keep_versions(text: str) -> int:
    if text == "all":
        return 0
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of versions or 'all', got {text!r}") from None


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add ``prunekit serve``'s arguments to ``parser``."""
    d = _DEFAULTS
    parser.add_argument(
        "model_dir",
        metavar="MODEL_DIR",
        type=Path,
        help="directory laid out as MODEL_DIR/<name>/<version>/model.onnx (or model.tflite)",
    )
    net = parser.add_argument_group("network")
    net.add_argument("--host", default=d.host, help=f"address to listen on (default {d.host}: this machine only)")
    secure = parser.add_argument_group("signed and encrypted models (the 'secure' extra)")
    secure.add_argument("--public-key", metavar="PEM", help="Ed25519 public key: serve only models whose .sig verifies with it")
    secure.add_argument("--encryption-key-file", metavar="KEY", help="AES-256 key (64 hex digits) for model.*.enc files")
    secure.add_argument("--encryption-key-env", metavar="VAR", help="environment variable holding that key (instead of a file)")
    net.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --host without a bearer token (trusted networks only; refused otherwise)",
    )
    net.add_argument("--port", type=int, default=d.port, help=f"port to listen on, 0 for any free one (default {d.port})")
    net.add_argument(
        "--max-body-bytes",
        type=parse_size,
        default=d.max_body_bytes,
        metavar="SIZE",
        help="largest request body accepted, e.g. 8M (default 8M); larger ones get 413",
    )
    net.add_argument(
        "--shutdown-timeout",
        type=float,
        default=d.shutdown_timeout_s,
        metavar="SECONDS",
        help=f"on SIGTERM, how long in-flight requests may finish (default {d.shutdown_timeout_s:g})",
    )
    auth = parser.add_argument_group("auth (off unless one of these is given)")
    auth.add_argument(
        "--token-env",
        nargs="?",
        const=DEFAULT_TOKEN_ENV,
        metavar="VAR",
        help=f"require 'Authorization: Bearer <token>' with the token in env var VAR (default {DEFAULT_TOKEN_ENV})",
    )
    auth.add_argument("--token-file", type=Path, metavar="PATH", help="require a bearer token, read from PATH")
    models = parser.add_argument_group("models")
    models.add_argument(
        "--keep-versions",
        type=_keep_versions,
        default=d.keep_versions,
        metavar="N",
        help="how many of each model's highest versions stay loaded, or 'all' (default 1)",
    )
    models.add_argument(
        "--poll-interval",
        type=float,
        default=d.poll_interval_s,
        metavar="SECONDS",
        help=f"scan MODEL_DIR for new versions this often, 0 to never (default {d.poll_interval_s:g})",
    )
    models.add_argument("--allow-nonfinite", action="store_true", help="accept NaN and infinity in float inputs")
    batching = parser.add_argument_group("batching and threads")
    batching.add_argument(
        "--no-batching",
        dest="batching",
        action="store_false",
        help="run each request alone instead of stacking concurrent requests",
    )
    batching.add_argument(
        "--max-batch-size",
        type=int,
        default=d.max_batch_size,
        metavar="ROWS",
        help=f"most rows stacked into one inference call (default {d.max_batch_size})",
    )
    batching.add_argument(
        "--batch-timeout-ms",
        type=float,
        default=d.batch_timeout_ms,
        metavar="MS",
        help=f"longest a request waits for others to join its batch (default {d.batch_timeout_ms:g})",
    )
    batching.add_argument(
        "--inference-threads",
        type=int,
        default=d.inference_threads,
        metavar="N",
        help=f"worker threads running inference calls (default {d.inference_threads})",
    )
    batching.add_argument(
        "--intra-op-threads",
        type=int,
        default=d.intra_op_threads,
        metavar="N",
        help=f"threads inside one inference call, 0 for the runtime's choice (default {d.intra_op_threads})",
    )
    batching.add_argument(
        "--request-timeout",
        type=float,
        default=d.request_timeout_s,
        metavar="SECONDS",
        help=f"answer 504 when a predict waits longer than this (default {d.request_timeout_s:g})",
    )
    batching.add_argument(
        "--max-queued-requests",
        type=int,
        default=d.max_queued_requests,
        metavar="N",
        help=f"requests waiting per model before 503 (default {d.max_queued_requests})",
    )
    drift = parser.add_argument_group("drift monitoring (versions with a profile.json; see docs/monitoring.md)")
    dd = d.drift
    drift.add_argument("--no-drift", dest="drift_monitoring", action="store_false", help="do not watch inputs for drift")
    drift.add_argument("--drift-window", type=int, default=dd.window, metavar="ROWS", help=f"rows scored (default {dd.window})")
    drift.add_argument(
        "--drift-min-rows",
        type=int,
        default=dd.min_rows,
        metavar="ROWS",
        help=f"rows before scores count (default {dd.min_rows})",
    )
    drift.add_argument(
        "--drift-psi-threshold",
        type=float,
        default=dd.psi_threshold,
        metavar="X",
        help=f"PSI of a drifted feature (default {dd.psi_threshold})",
    )
    drift.add_argument(
        "--drift-ks-threshold",
        type=float,
        default=dd.ks_threshold,
        metavar="X",
        help=f"KS of a drifted feature (default {dd.ks_threshold})",
    )
    drift.add_argument(
        "--drift-share-threshold",
        type=float,
        default=dd.share_threshold,
        metavar="X",
        help=f"share of drifted features that flags an input (default {dd.share_threshold})",
    )
    drift.add_argument(
        "--drift-min-accuracy", type=float, default=None, metavar="X", help="warn when feedback accuracy falls below X"
    )
    logs = parser.add_argument_group("logging (JSON lines on stderr)")
    logs.add_argument("--log-level", choices=LEVELS, default=d.log_level)
    logs.add_argument("--no-access-log", dest="access_log", action="store_false", help="do not log every request")


def build_config(args: argparse.Namespace) -> ServeConfig:
    """The :class:`ServeConfig` described by parsed arguments (the token is read here).

    Example::

        build_config(parser.parse_args(["serve", "models/", "--port", "0"]))
    """
    if not args.model_dir.is_dir():
        raise ConfigError(f"MODEL_DIR {args.model_dir} is not a directory")
    return ServeConfig(
        model_dir=args.model_dir,
        host=args.host,
        port=args.port,
        keep_versions=args.keep_versions,
        batching=args.batching,
        max_batch_size=args.max_batch_size,
        batch_timeout_ms=args.batch_timeout_ms,
        inference_threads=args.inference_threads,
        intra_op_threads=args.intra_op_threads,
        max_queued_requests=args.max_queued_requests,
        max_body_bytes=args.max_body_bytes,
        allow_nonfinite=args.allow_nonfinite,
        poll_interval_s=args.poll_interval,
        token=load_token(args.token_env, args.token_file),
        access_log=args.access_log,
        log_level=args.log_level,
        shutdown_timeout_s=args.shutdown_timeout,
        request_timeout_s=args.request_timeout,
        insecure=args.insecure,
        drift_monitoring=args.drift_monitoring,
        drift=DriftSettings(
            window=args.drift_window,
            min_rows=args.drift_min_rows,
            psi_threshold=args.drift_psi_threshold,
            ks_threshold=args.drift_ks_threshold,
            share_threshold=args.drift_share_threshold,
            min_accuracy=args.drift_min_accuracy,
        ),
        **_artifact_keys(args),
    )


def _artifact_keys(args: argparse.Namespace) -> dict[str, bytes]:
    """The public key (a file: it is not secret) and the encryption key (a file or an env var, never an argument)."""
    keys: dict[str, bytes] = {}
    if args.public_key:
        path = Path(args.public_key)
        if not path.is_file():
            raise ConfigError(f"--public-key {path} does not exist")
        keys["public_key"] = path.read_bytes()
    if args.encryption_key_file or args.encryption_key_env:
        if args.encryption_key_file and args.encryption_key_env:
            raise ConfigError("give --encryption-key-file or --encryption-key-env, not both")
        from prunekit.artifacts.signing import load_encryption_key

        if args.encryption_key_env:
            keys["encryption_key"] = load_encryption_key(env=args.encryption_key_env)
        else:
            keys["encryption_key"] = load_encryption_key(args.encryption_key_file)
    return keys


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; configuration errors exit with status 2 (via the CLI)."""
    from prunekit.serve.server import serve

    serve(build_config(args))
    return 0
