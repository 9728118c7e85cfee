"""Measure a deployable ONNX file itself: accuracy, latency, file size raw and gzip, peak memory.

Everything runs in ONNX Runtime on CPU, so the figures are those of the artifact users ship,
not of the PyTorch model it came from. Latency of several files is measured interleaved
(A B C A B C ...) so that drift on a shared machine hits them all alike.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from prunekit._gzip import gzip_size
from prunekit.errors import ConfigError
from prunekit.torch._ort import InputSpec, batch_of, feed, input_specs, session


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one batch size over ``runs`` timed runs (after warm-up), in milliseconds."""

    batch_size: int
    median_ms: float
    p90_ms: float
    runs: int


@dataclass(frozen=True)
class ArtifactReport:
    """What :func:`evaluate_onnx` measured on one file (``accuracy`` None without labels)."""

    path: Path
    size_bytes: int
    gzip_bytes: int
    accuracy: float | None
    latency: dict[int, LatencyStats] = field(default_factory=dict)
    peak_memory_bytes: int | None = None
    threads: int | None = None

    def to_dict(self) -> dict[str, Any]:
        value = asdict(self)
        value["path"] = str(self.path)
        value["latency"] = {str(b): asdict(s) for b, s in self.latency.items()}
        return value


def file_sizes(path: str | os.PathLike) -> tuple[int, int]:
    """Raw and gzip (level 9) size of a file in bytes.

    Example::

        raw, packed = file_sizes("model.onnx")
    """
    data = Path(path).read_bytes()
    return len(data), gzip_size(data)


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def onnx_accuracy(path: str | os.PathLike, x: Any, y: Any, batch_size: int = 256, threads: int | None = None) -> float:
    """Top-1 accuracy of an ONNX classifier (first output, argmax over the last axis) on ``(x, y)``.

    Example::

        onnx_accuracy("model.int8.onnx", split.x_test, split.y_test)  # 0.975
    """
    x, y = _as_numpy(x), _as_numpy(y)
    if len(x) != len(y) or len(x) == 0:
        raise ConfigError(f"test data should be (x, y) with as many labels as samples, got {len(x)} and {len(y)}")
    sess = session(path, threads)
    specs = input_specs(sess)
    correct = 0
    for start in range(0, len(x), batch_size):
        logits = sess.run(None, feed(specs, x[start:start + batch_size], f"test batch at sample {start}"))[0]
        if logits.ndim < 2:
            raise ConfigError(f"{path}: first output has shape {logits.shape}; accuracy needs class scores (batch, classes)")
        correct += int((logits.argmax(axis=-1) == y[start:start + batch_size]).sum())
    return correct / len(x)


def _latency_input(spec: InputSpec, batch_size: int, x: np.ndarray | None) -> np.ndarray:
    if x is not None:
        return batch_of(x, batch_size)
    if any(d is None for d in spec.shape[1:]):
        raise ConfigError(f"input {spec.name!r} has dynamic dims {spec.describe()}; pass test data to time it")
    return np.random.default_rng(0).standard_normal((batch_size, *spec.shape[1:])).astype(spec.dtype)


def measure_latency(
    paths: Mapping[str, str | os.PathLike],
    x: Any = None,
    batch_sizes: Sequence[int] = (1, 64),
    *,
    warmup: int = 5,
    repeats: int = 30,
    threads: int | None = None,
) -> dict[str, dict[int, LatencyStats]]:
    """Time several ONNX files interleaved (A B A B ...): median and p90 per file and batch size.

    ``x`` gives the samples to run (repeated to fill a batch); without it, random inputs of the
    model's shape are used.

    Example::

        stats = measure_latency({"fp32": "m.onnx", "int8": "m.int8.onnx"}, split.x_test)
        stats["int8"][64].median_ms
    """
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"repeats should be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    x = None if x is None else _as_numpy(x)
    sessions = {label: session(path, threads) for label, path in paths.items()}
    results: dict[str, dict[int, LatencyStats]] = {label: {} for label in paths}
    for size in batch_sizes:
        feeds = {}
        for label, sess in sessions.items():
            specs = input_specs(sess)
            if len(specs) != 1:
                raise ConfigError(f"{paths[label]} has {len(specs)} inputs; latency is measured on single-input models")
            feeds[label] = feed(specs, _latency_input(specs[0], size, x), f"latency batch of {size}")
        for _ in range(warmup):
            for label, sess in sessions.items():
                sess.run(None, feeds[label])
        times: dict[str, list[float]] = {label: [] for label in sessions}
        for _ in range(repeats):
            for label, sess in sessions.items():
                start = time.perf_counter()
                sess.run(None, feeds[label])
                times[label].append((time.perf_counter() - start) * 1e3)
        for label, samples in times.items():
            results[label][size] = LatencyStats(size, float(np.median(samples)), float(np.percentile(samples, 90)), repeats)
    return results


_MEMORY_PROBE = r"""
import json, sys
import numpy as np, onnxruntime as ort
def status(field):  # VmHWM, unlike ru_maxrss, is not inherited across exec from the (large) parent
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) * 1024 for line in handle if line.startswith(field + ":"))
before = status("VmRSS")
options = ort.SessionOptions()
options.log_severity_level = 3
if sys.argv[3] != "None":
    options.intra_op_num_threads = int(sys.argv[3])
sess = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
sess.run(None, {sess.get_inputs()[0].name: np.load(sys.argv[2])})
peak = status("VmHWM")
print(json.dumps({"peak_increase": max(0, peak - before)}))
"""


def peak_memory(path: str | os.PathLike, batch: np.ndarray, threads: int | None = None, timeout: float = 120.0) -> int | None:
    """Peak resident memory added by loading ``path`` and running one ``batch``, in bytes (Linux; else None).

    Measured in a fresh Python process, so other models in this process do not blur it.

    Example::

        peak_memory("model.onnx", x[:64])  # 9_437_184
    """
    if not sys.platform.startswith("linux"):
        return None
    with tempfile.TemporaryDirectory(prefix="prunekit-mem-") as work:
        batch_path = Path(work) / "batch.npy"
        np.save(batch_path, batch)
        done = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(path), str(batch_path), str(threads)],
                              capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise ConfigError(f"could not run {path} to measure its memory: {done.stderr.strip()[-500:]}")
    return int(json.loads(done.stdout.strip().splitlines()[-1])["peak_increase"])


def evaluate_onnx(
    path: str | os.PathLike,
    test_data: tuple[Any, Any] | None = None,
    *,
    batch_sizes: Sequence[int] = (1, 64),
    warmup: int = 5,
    repeats: int = 30,
    threads: int | None = None,
    measure_memory: bool = True,
) -> ArtifactReport:
    """Measure an ONNX file in ONNX Runtime: accuracy on ``test_data=(x, y)``, latency, sizes, peak memory.

    Example::

        report = evaluate_onnx("model.int8.onnx", (split.x_test, split.y_test))
        report.accuracy, report.latency[64].median_ms, report.gzip_bytes
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"ONNX file {path} does not exist")
    raw, packed = file_sizes(path)
    x = None if test_data is None else _as_numpy(test_data[0])
    accuracy = None if test_data is None else onnx_accuracy(path, test_data[0], test_data[1], threads=threads)
    latency = measure_latency({"model": path}, x, batch_sizes, warmup=warmup, repeats=repeats, threads=threads)["model"]
    memory = None
    if measure_memory:
        spec = input_specs(session(path, threads=1))[0]
        memory = peak_memory(path, _latency_input(spec, max(batch_sizes), x).astype(spec.dtype), threads)
    return ArtifactReport(path, raw, packed, accuracy, latency, memory, threads)
