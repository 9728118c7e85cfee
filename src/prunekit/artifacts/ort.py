"""Small ONNX Runtime helpers shared by export, quantization and evaluation: sessions, inputs, quiet logs.

Framework-free (numpy and onnxruntime), so ONNX files can be measured without torch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from prunekit.errors import ConfigError

_NUMPY_OF_ONNX = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


@dataclass(frozen=True)
class InputSpec:
    """One graph input: name, numpy dtype, and shape with ``None`` for symbolic (dynamic) dims."""

    name: str
    dtype: Any
    shape: tuple[int | None, ...]

    def describe(self) -> str:
        return (
            "("
            + ", ".join("batch" if d is None and i == 0 else "?" if d is None else str(d) for i, d in enumerate(self.shape))
            + ")"
        )


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


def _by_input(specs: Sequence[InputSpec], batch: Any, where: str) -> list[Any]:
    """One value per model input, from an array, a tuple in input order, or a dict by input name."""
    if isinstance(batch, Mapping):
        missing = [s.name for s in specs if s.name not in batch]
        if missing:
            raise ConfigError(f"{where} lacks the model input(s) {missing}; it has {sorted(batch)}")
        return [batch[s.name] for s in specs]
    if isinstance(batch, (tuple, list)):
        if len(batch) != len(specs):
            raise ConfigError(
                f"{where} has {len(batch)} arrays but the model has {len(specs)} input(s) {[s.name for s in specs]}"
            )
        return list(batch)
    if len(specs) != 1:
        raise ConfigError(
            f"{where} is one array but the model has {len(specs)} inputs {[s.name for s in specs]}; pass a dict by input name"
        )
    return [batch]


def feed(specs: Sequence[InputSpec], batch: Any, where: str) -> dict[str, np.ndarray]:
    """Turn a batch (an array, a tensor, a tuple of them in input order, or a dict by input name) into a checked ORT feed.

    ``where`` names the batch in error messages ("calibration batch 3").
    """
    result = {}
    for spec, value in zip(specs, _by_input(specs, batch, where)):
        array = _as_array(value)
        fits = array.ndim == len(spec.shape) and all(d is None or d == a for d, a in zip(spec.shape, array.shape))
        if not fits:
            raise ConfigError(
                f"{where} has shape {tuple(array.shape)} but the model input {spec.name!r} expects "
                f"{spec.describe()}; give batches shaped like the model's input"
            )
        result[spec.name] = np.ascontiguousarray(array, dtype=spec.dtype)
    return result


#: Model inputs as numpy: one array, a tuple in input order, or a dict by input name (see :func:`as_samples`).
Samples = Union[np.ndarray, dict[str, np.ndarray], tuple[np.ndarray, ...]]


def as_samples(data: Any) -> Samples:
    """Model inputs as numpy: a dict by input name and a tuple in input order stay one; anything else is one array."""
    if isinstance(data, Mapping):
        return {str(name): _as_array(value) for name, value in data.items()}
    if isinstance(data, tuple):
        return tuple(_as_array(value) for value in data)
    return _as_array(data)


def _arrays(samples: Samples) -> list[np.ndarray]:
    if isinstance(samples, Mapping):
        return list(samples.values())
    return list(samples) if isinstance(samples, tuple) else [samples]


def _rebuild(samples: Samples, arrays: list[np.ndarray]) -> Samples:
    if isinstance(samples, Mapping):
        return dict(zip(samples, arrays))
    return tuple(arrays) if isinstance(samples, tuple) else arrays[0]


def sample_count(samples: Samples, where: str) -> int:
    """How many samples ``samples`` (from :func:`as_samples`) holds; every input must hold as many."""
    counts = [len(array) if array.ndim else 0 for array in _arrays(samples)]
    if not counts or len(set(counts)) != 1:
        names = list(samples) if isinstance(samples, Mapping) else list(range(len(counts)))
        raise ConfigError(f"{where} should give every model input the same number of samples, got {dict(zip(names, counts))}")
    return counts[0]


def rows(samples: Samples, start: int, stop: int) -> Samples:
    """Samples ``start:stop`` of every input."""
    return _rebuild(samples, [array[start:stop] for array in _arrays(samples)])


def batch_of(samples: Samples, size: int) -> Samples:
    """The first ``size`` samples of every input (an array, a tuple or a dict of arrays), repeated if there are fewer."""
    arrays = _arrays(samples)
    if not arrays or any(len(array) == 0 for array in arrays):
        raise ConfigError("cannot build an input batch from an empty array")
    return _rebuild(samples, [_repeat(array, size) for array in arrays])


def _repeat(array: np.ndarray, size: int) -> np.ndarray:
    reps = -(-size // len(array))
    return np.concatenate([array] * reps)[:size] if reps > 1 else array[:size]


def generated_batch(specs: Sequence[InputSpec], size: int, where: str) -> dict[str, np.ndarray]:
    """A batch of ``size`` built from the input specs: seeded normal floats, zeros for integer and bool inputs.

    Raises :class:`~prunekit.errors.ConfigError` naming the input when a dimension other than the
    batch is dynamic (a sequence length, an image size): only real data can say how large it is.
    """
    batch = {}
    for spec in specs:
        if any(d is None for d in spec.shape[1:]):
            raise ConfigError(
                f"{where}: input {spec.name!r} has the dynamic shape {spec.describe()} whose size only "
                "data can give; pass data (an array, or a dict of arrays by input name) to run it"
            )
        shape = tuple(int(d) for d in (size, *spec.shape[1:]) if d is not None)  # every dim is known here
        if np.issubdtype(spec.dtype, np.floating):
            batch[spec.name] = np.random.default_rng(0).standard_normal(shape).astype(spec.dtype)
        else:
            batch[spec.name] = np.zeros(shape, spec.dtype)
    return batch


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
