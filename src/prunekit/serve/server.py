"""Run the model server on uvicorn: load the models, bind, serve, shut down gracefully.

Example::

    serve(ServeConfig(model_dir=Path("models"), host="127.0.0.1", port=8501))   # blocks
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Iterator

from prunekit.core.optional import require
from prunekit.errors import ConfigError
from prunekit.serve.app import ModelServer
from prunekit.serve.config import ServeConfig
from prunekit.serve.jsonlog import configure_json_logging

log = logging.getLogger("prunekit.serve")
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0 picks a free port).

    Example::

        sock = bind_socket("127.0.0.1", 0); sock.getsockname()[1]   # e.g. 43817
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc}") from exc
    sock.set_inheritable(True)
    return sock


class _Stop(Exception):
    """SIGINT/SIGTERM outside uvicorn's own handlers (while loading, or re-raised after shutdown)."""


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop(signum)


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve(config: ServeConfig) -> None:
    """Serve ``config.model_dir`` until SIGINT/SIGTERM, then finish in-flight requests and return.

    Logs one JSON line per event on stderr; the ``server ready`` line carries the ``url``.
    Raises :class:`~prunekit.errors.ConfigError` when no model loads or the address is taken.

    Example::

        serve(ServeConfig(model_dir=Path("models"), port=8501, max_batch_size=16))
    """
    uvicorn = require("uvicorn", "serve")
    configure_json_logging(config.log_level)
    with _stop_on_signals():
        try:
            server = ModelServer(config)
            server.load_models()
            sock = bind_socket(config.host, config.port)
            host, port = sock.getsockname()[:2]
            server.url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
            if config.token is None and config.host not in _LOOPBACK:  # only with insecure=True (ServeConfig checks)
                log.warning("serving without a bearer token on a non-loopback address", extra={"host": config.host})
            log.info("starting", extra={"settings": config.summary()})
            uv_config = uvicorn.Config(
                server.app,
                host=host,
                port=port,
                log_config=None,
                log_level=config.log_level,
                access_log=False,
                lifespan="on",
                timeout_graceful_shutdown=config.shutdown_timeout_s,
                server_header=False,
                proxy_headers=False,
            )
            uvicorn.Server(uv_config).run(sockets=[sock])
        except _Stop:
            log.info("stopped by signal")
