"""Structured logs: one JSON object per line on stderr, for the server and uvicorn alike.

Example::

    configure_json_logging("info")
    logging.getLogger("prunekit.serve").info("loaded model", extra={"model": "mlp", "version": 2})
    # {"ts": "2025-01-01T12:00:00.000Z", "level": "info", "logger": "prunekit.serve",
    #  "msg": "loaded model", "model": "mlp", "version": 2}
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

# Attributes every LogRecord has; anything else came from ``extra=`` and is logged as a field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "color_message"}
LEVELS = ("debug", "info", "warning", "error")


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line with its ``extra`` fields.

    Example::

        handler.setFormatter(JsonFormatter())
    """

    def format(self, record: logging.LogRecord) -> str:
        """The record as compact JSON."""
        created = time.gmtime(record.created)
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", created) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_json_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Send every log record (prunekit's and uvicorn's) to ``stream`` as JSON lines.

    Example::

        configure_json_logging("warning")
    """
    if level not in LEVELS:
        raise ValueError(f"log level should be one of {LEVELS}, got {level!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # Python warnings become JSON lines too
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
