"""Measure a deployable ONNX file itself: accuracy, latency, file size raw and gzip, peak memory.

Everything runs in ONNX Runtime on CPU, so the figures are those of the artifact users ship,
not of the framework model it came from (with its external data file, for a model stored as
``model.onnx`` plus ``model.onnx.data``). Latency of several files is measured interleaved
(A B C A B C ...) so that drift on a shared machine hits them all alike.

Framework-free (numpy, onnx, onnxruntime): ``prunekit inspect model.onnx`` uses it without
torch; ``prunekit.torch.evaluate_onnx`` is the same function.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prunekit.artifacts.onnx_data import external_data_files
from prunekit.artifacts.ort import (
    InputSpec,
    Samples,
    as_samples,
    batch_of,
    feed,
    generated_batch,
    input_specs,
    rows,
    sample_count,
    session,
)
from prunekit.core.gzip import gzip_file_size
from prunekit.errors import ConfigError


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
    """Raw and gzip (level 9) size of a file in bytes; an ``.onnx`` file counts its external data files too.

    Example::

        raw, packed = file_sizes("model.onnx")  # model.onnx plus model.onnx.data, if it has one
    """
    path = Path(path)
    files = (path, *(external_data_files(path) if path.suffix == ".onnx" else ()))
    return sum(file.stat().st_size for file in files), sum(gzip_file_size(file) for file in files)


def onnx_accuracy(path: str | os.PathLike, x: Any, y: Any, batch_size: int = 256, threads: int | None = None) -> float:
    """Top-1 accuracy of an ONNX classifier (first output, argmax over the last axis) on ``(x, y)``.

    ``x`` is an array for a single-input model; for several inputs, a dict of arrays by ONNX
    input name (or a tuple in input order), every one with a row per label.

    Example::

        onnx_accuracy("model.int8.onnx", split.x_test, split.y_test)  # 0.975
        onnx_accuracy("bert.onnx", {"input_ids": ids, "attention_mask": mask}, labels)
    """
    x, y = as_samples(x), np.asarray(y.detach().cpu() if hasattr(y, "detach") else y)
    count = sample_count(x, "test data")
    if count != len(y) or count == 0:
        raise ConfigError(f"test data should be (x, y) with as many labels as samples, got {count} and {len(y)}")
    sess = session(path, threads)
    specs = input_specs(sess)
    correct = 0
    for start in range(0, count, batch_size):
        batch = feed(specs, rows(x, start, start + batch_size), f"test batch at sample {start}")
        logits = sess.run(None, batch)[0]
        if logits.ndim < 2:
            raise ConfigError(f"{path}: first output has shape {logits.shape}; accuracy needs class scores (batch, classes)")
        correct += int((logits.argmax(axis=-1) == y[start : start + batch_size]).sum())
    return correct / count


def _input_batch(path: str | os.PathLike, specs: list[InputSpec], size: int, x: Samples | None) -> dict[str, np.ndarray]:
    """A checked feed of ``size`` samples: rows of ``x`` (repeated when it has fewer), or generated from the specs."""
    if x is None:
        return generated_batch(specs, size, str(path))
    return feed(specs, batch_of(x, size), f"batch of {size} for {path}")


def time_onnx_files(
    paths: Mapping[str, str | os.PathLike],
    x: Any = None,
    batch_sizes: Sequence[int] = (1, 64),
    *,
    warmup: int = 5,
    repeats: int = 30,
    threads: int | None = None,
) -> dict[str, dict[int, LatencyStats]]:
    """Time several ONNX files interleaved (A B A B ...): median and p90 per file and batch size.

    ``x`` gives the samples to run (an array, or for several inputs a dict of arrays by input name
    or a tuple in input order; repeated to fill a batch). Without it, inputs are generated from
    the model's input shapes: seeded normal floats, zeros for integer inputs (token ids, masks);
    an input with a dynamic dimension other than the batch (a sequence length) then raises
    :class:`~prunekit.errors.ConfigError`, since only data can give its size.

    Example::

        stats = time_onnx_files({"fp32": "m.onnx", "int8": "m.int8.onnx"}, split.x_test)
        stats["int8"][64].median_ms
    """
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"repeats should be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    x = None if x is None else as_samples(x)
    sessions = {label: session(path, threads) for label, path in paths.items()}
    results: dict[str, dict[int, LatencyStats]] = {label: {} for label in paths}
    for size in batch_sizes:
        feeds = {label: _input_batch(paths[label], input_specs(sess), size, x) for label, sess in sessions.items()}
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
sess.run(None, dict(np.load(sys.argv[2])))
peak = status("VmHWM")
print(json.dumps({"peak_increase": max(0, peak - before)}))
"""


def peak_memory(path: str | os.PathLike, batch: Any, threads: int | None = None, timeout: float = 120.0) -> int | None:
    """Peak resident memory added by loading ``path`` and running one ``batch``, in bytes (Linux; else None).

    ``batch`` is an array, or for several inputs a dict of arrays by input name (or a tuple in
    input order). Measured in a fresh Python process, so other models in this process do not blur it.

    Example::

        peak_memory("model.onnx", x[:64])  # 9_437_184
        peak_memory("bert.onnx", {"input_ids": ids[:64], "attention_mask": mask[:64]})
    """
    if not sys.platform.startswith("linux"):
        return None
    inputs = feed(input_specs(session(path, threads=1)), as_samples(batch), f"memory batch for {path}")
    with tempfile.TemporaryDirectory(prefix="prunekit-mem-") as work:
        batch_path = Path(work) / "batch.npz"
        np.savez(batch_path, **inputs)  # type: ignore[arg-type]  # numpy's stub types **kwds as the allow_pickle flag
        done = subprocess.run(
            [sys.executable, "-c", _MEMORY_PROBE, str(path), str(batch_path), str(threads)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    if done.returncode != 0:
        raise ConfigError(f"could not run {path} to measure its memory: {done.stderr.strip()[-500:]}")
    return int(json.loads(done.stdout.strip().splitlines()[-1])["peak_increase"])


def evaluate_onnx(
    path: str | os.PathLike,
    test_data: tuple[Any, Any | None] | None = None,
    *,
    batch_sizes: Sequence[int] = (1, 64),
    warmup: int = 5,
    repeats: int = 30,
    threads: int | None = None,
    measure_memory: bool = True,
) -> ArtifactReport:
    """Measure an ONNX file in ONNX Runtime: accuracy on ``test_data=(x, y)``, latency, sizes, peak memory.

    ``x`` is an array, or for a model with several inputs a dict of arrays by ONNX input name
    (or a tuple in input order); latency and memory batches are its rows, repeated up to each
    batch size. ``y=None`` skips accuracy; without ``test_data`` the inputs are generated (see
    :func:`time_onnx_files`). The sizes of a model with external data count its ``.data`` file.

    Example::

        report = evaluate_onnx("model.int8.onnx", (split.x_test, split.y_test))
        report.accuracy, report.latency[64].median_ms, report.gzip_bytes
        evaluate_onnx("bert.onnx", ({"input_ids": ids, "attention_mask": mask}, labels))
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"ONNX file {path} does not exist")
    raw, packed = file_sizes(path)
    x = None if test_data is None else as_samples(test_data[0])
    labels = None if test_data is None else test_data[1]
    accuracy = None if labels is None else onnx_accuracy(path, x, labels, threads=threads)
    latency = time_onnx_files({"model": path}, x, batch_sizes, warmup=warmup, repeats=repeats, threads=threads)["model"]
    memory = None
    if measure_memory:
        batch = _input_batch(path, input_specs(session(path, threads=1)), max(batch_sizes), x)
        memory = peak_memory(path, batch, threads)
    return ArtifactReport(path, raw, packed, accuracy, latency, memory, threads)


def measure_latency(*args: Any, **kwargs: Any) -> dict[str, dict[int, LatencyStats]]:
    """Deprecated name of :func:`time_onnx_files` (``measure_latency`` is the model-latency verb of the backends)."""
    import warnings

    warnings.warn(
        "prunekit.artifacts.onnx_artifact.measure_latency is now time_onnx_files; the old name goes away in the next release",
        DeprecationWarning,
        stacklevel=2,
    )
    return time_onnx_files(*args, **kwargs)
