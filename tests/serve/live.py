"""A real ``prunekit serve`` process on 127.0.0.1 for end-to-end tests, and reference outputs.

Example::

    with LiveServer(model_dir, "--keep-versions", "all") as server:
        httpx.post(server.url + "/v1/models/mlp:predict", json={"instances": [[1, 2, 3, 4]]})
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np


class LiveServer:
    """Runs ``python -m prunekit.cli serve MODEL_DIR --port 0 ...`` and reads its JSON logs."""

    def __init__(self, model_dir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.command = [
            sys.executable,
            "-m",
            "prunekit.cli",
            "serve",
            str(model_dir),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            *args,
        ]
        self.env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": "1", **(env or {})}
        self.lines: list[str] = []
        self.url = ""
        self.process: subprocess.Popen[str] | None = None
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None

    def _read(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))
            entry = _parse(line)
            if entry and entry.get("msg") == "server ready":
                self.url = entry["url"]
                self._ready.set()
        self._ready.set()

    def start(self, timeout: float = 60.0) -> LiveServer:
        """Start the process and wait for its ``server ready`` log line."""
        self.process = subprocess.Popen(self.command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=self.env)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(timeout) or not self.url:
            self.kill()
            raise RuntimeError("server did not start:\n" + "\n".join(self.lines[-30:]))
        return self

    def logs(self) -> list[dict[str, Any]]:
        """The log lines so far that are JSON objects."""
        return [entry for entry in map(_parse, list(self.lines)) if entry is not None]

    def wait_for_logs(self, **fields: Any) -> list[dict[str, Any]]:
        """The JSON log entries holding ``fields``, waiting up to 10 s for the first: the server writes its
        access line after the response, so a test that reads right after a request can be early."""
        deadline = time.monotonic() + 10.0
        while True:
            found = [e for e in self.logs() if all(e.get(k) == v for k, v in fields.items())]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.02)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait for the exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """Stop the process at once (cleanup after a failure, and last step of every use): then close its pipe.

        The log reader ends at the pipe's end of file, once the process has exited; closing the pipe after it
        keeps the file from being left to the garbage collector (a ``ResourceWarning`` in whatever test runs then).
        """
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        if self._reader is not None:
            self._reader.join(10)
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            self.kill()


def _parse(line: str) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def ort_run(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs of ONNX Runtime run directly on ``path`` (the reference for the server's answers)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def place(model_dir: Path, name: str, version: int | str, source: Path, metadata: dict | None = None) -> Path:
    """Copy ``source`` to ``model_dir/name/version/<source's file name>`` (and a metadata.json)."""
    target = model_dir / name / str(version)
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, target / source.name)
    if metadata is not None:
        (target / "metadata.json").write_text(json.dumps(metadata))
    return target / source.name


def wait_for(condition, timeout: float = 15.0, interval: float = 0.05) -> Any:
    """Poll ``condition()`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")
