"""Small ONNX Runtime helpers shared by export, quantization and evaluation: sessions, inputs, quiet logs."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from prunekit.errors import ConfigError

_NUMPY_OF_ONNX = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
                  "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
                  "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


@dataclass(frozen=True)
class InputSpec:
    """One graph input: name, numpy dtype, and shape with ``None`` for symbolic (dynamic) dims."""

    name: str
    dtype: Any
    shape: tuple[int | None, ...]

    def describe(self) -> str:
        return "(" + ", ".join("batch" if d is None and i == 0 else "?" if d is None else str(d)
                               for i, d in enumerate(self.shape)) + ")"


def session(path: str | os.PathLike, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session with full graph optimisation and ``threads`` intra-op threads (None: ORT's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.inter_op_num_threads = 1
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def input_specs(sess: Any) -> list[InputSpec]:
    """The session's inputs as :class:`InputSpec` (symbolic dims become ``None``)."""
    specs = []
    for node in sess.get_inputs():
        shape = tuple(d if isinstance(d, int) else None for d in node.shape)
        specs.append(InputSpec(node.name, _NUMPY_OF_ONNX.get(node.type, np.float32), shape))
    return specs


def _as_array(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def feed(specs: Sequence[InputSpec], batch: Any, where: str) -> dict[str, np.ndarray]:
    """Turn a batch (an array, a tensor, a tuple of them in input order, or a dict by input name) into a checked ORT feed.

    ``where`` names the batch in error messages ("calibration batch 3").
    """
    if isinstance(batch, Mapping):
        missing = [s.name for s in specs if s.name not in batch]
        if missing:
            raise ConfigError(f"{where} lacks the model input(s) {missing}; it has {sorted(batch)}")
        values = [batch[s.name] for s in specs]
    elif isinstance(batch, (tuple, list)):
        if len(batch) != len(specs):
            raise ConfigError(f"{where} has {len(batch)} arrays but the model has {len(specs)} input(s) "
                              f"{[s.name for s in specs]}")
        values = list(batch)
    else:
        if len(specs) != 1:
            raise ConfigError(f"{where} is one array but the model has {len(specs)} inputs "
                              f"{[s.name for s in specs]}; pass a dict by input name")
        values = [batch]
    result = {}
    for spec, value in zip(specs, values):
        array = _as_array(value)
        fits = array.ndim == len(spec.shape) and all(d is None or d == a for d, a in zip(spec.shape, array.shape))
        if not fits:
            raise ConfigError(f"{where} has shape {tuple(array.shape)} but the model input {spec.name!r} expects "
                              f"{spec.describe()}; give batches shaped like the model's input")
        result[spec.name] = np.ascontiguousarray(array, dtype=spec.dtype)
    return result


def batch_of(array: np.ndarray, size: int) -> np.ndarray:
    """The first ``size`` rows of ``array``, repeated when it has fewer."""
    if len(array) == 0:
        raise ConfigError("cannot build an input batch from an empty array")
    reps = -(-size // len(array))
    return np.concatenate([array] * reps)[:size] if reps > 1 else array[:size]


class _DropOnnxruntimeRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "onnxruntime" not in record.pathname and "onnxscript" not in record.pathname


@contextlib.contextmanager
def quiet_exporters() -> Iterator[None]:
    """Silence the progress prints, warnings and root-logger chatter of torch.onnx and ORT's quantizer."""
    drop = _DropOnnxruntimeRecords()
    root = logging.getLogger()
    noisy = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [logger.level for logger in noisy]
    root.addFilter(drop)
    for logger in noisy:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.removeFilter(drop)
        for logger, level in zip(noisy, levels):
            logger.setLevel(level)
