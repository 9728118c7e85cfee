"""TFLite for Keras 3 models: float, dynamic-range int8 and full-integer int8 conversion, and
accuracy/latency measured in the LiteRT interpreter (``ai_edge_litert``; TF's deprecated
``tf.lite.Interpreter`` when LiteRT is not installed).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from prunekit.artifacts.litert import interpreter_class
from prunekit.core.atomic import atomic_write_bytes
from prunekit.core.gzip import gzip_size
from prunekit.errors import ConfigError, CorruptFileError

QUANTIZATIONS = (None, "float", "dynamic", "int8")


@contextlib.contextmanager
def _quiet_converter() -> Iterator[None]:
    """Hold back the converter's console chatter (Python prints, warnings and the C++ log on fd 2);
    replay the C++ log on stderr when the conversion fails."""
    log = tempfile.TemporaryFile()
    saved = os.dup(2)
    sys.stderr.flush()
    os.dup2(log.fileno(), 2)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
            yield
    except BaseException:
        os.dup2(saved, 2)
        log.seek(0)
        sys.stderr.write(log.read().decode("utf-8", "replace")[-4000:])
        raise
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        log.close()


def _input_specs(model: Any) -> list[tuple[str, tuple]]:
    return [(getattr(t, "name", f"input_{i}"), tuple(t.shape)) for i, t in enumerate(model.inputs)]


def _samples(data: Any, limit: int) -> list[list[np.ndarray]]:
    """Up to ``limit`` representative samples, each a list with one array per model input."""
    if callable(data):
        data = data()
    if isinstance(data, np.ndarray):
        array = data
        data = (array[i : i + 1] for i in range(len(array)))
    elif isinstance(data, tf.data.Dataset):
        data = data.as_numpy_iterator()
    if not isinstance(data, Iterable):
        raise ConfigError(
            f"representative_data should be an array of samples, an iterable/tf.data.Dataset of batches, or a "
            f"callable returning one (TF's representative_dataset); got {type(data).__name__}"
        )
    samples = []
    for item in data:
        if len(samples) >= limit:
            break
        parts = list(item) if isinstance(item, (list, tuple)) else [item]
        samples.append([np.asarray(part, dtype=np.float32) for part in parts])
    if not samples:
        raise ConfigError("representative_data yielded no samples; full-integer quantization needs calibration data")
    return samples


def check_representative_data(model: Any, samples: Sequence[Sequence[np.ndarray]]) -> None:
    """Raise a :class:`~prunekit.ConfigError` naming the input when a sample does not fit the model.

    Example::

        check_representative_data(model, [[x_val[:1]]])
    """
    specs = _input_specs(model)
    for index, sample in enumerate(samples):
        if len(sample) != len(specs):
            raise ConfigError(
                f"representative sample {index} has {len(sample)} array(s), but the model has {len(specs)} "
                f"input(s): {[name for name, _ in specs]}"
            )
        for array, (name, expected) in zip(sample, specs):
            fits = array.ndim == len(expected) and all(e is None or e == a for e, a in zip(expected, array.shape))
            if not fits:
                hint = ""
                if array.ndim == 4 and len(expected) == 4 and array.shape[1:] == (expected[3], expected[1], expected[2]):
                    hint = "; it looks channels-first: Keras takes NHWC, transpose with x.transpose(0, 2, 3, 1)"
                elif array.ndim == len(expected) - 1:
                    hint = "; add the batch dimension (x[i:i + 1] instead of x[i])"
                raise ConfigError(
                    f"representative sample {index} for input {name!r} has shape {array.shape}, but the model "
                    f"expects {expected} (None = any){hint}"
                )


def convert_to_tflite(
    model: Any,
    quantization: str | None = None,
    representative_data: Any = None,
    *,
    calibration_samples: int = 200,
    sparse: bool = False,
    output_path: str | os.PathLike | None = None,
) -> bytes:
    """Convert a (stripped) Keras model to a TFLite flatbuffer and return its bytes.

    ``quantization``: ``None``/``"float"`` (fp32), ``"dynamic"`` (int8 weights, float
    activations) or ``"int8"`` (full integer, int8 input and output, calibrated on up to
    ``calibration_samples`` samples of ``representative_data``). ``sparse=True`` adds TFLite's
    sparse weight encoding. ``output_path`` is written atomically.

    Example::

        flatbuffer = convert_to_tflite(model, "int8", representative_data=split.x_val, output_path="m.tflite")
    """
    if quantization not in QUANTIZATIONS:
        raise ConfigError(f"quantization should be one of {QUANTIZATIONS}, got {quantization!r}")
    from prunekit.keras.unstructured.state import prunings

    if prunings(model):
        raise ConfigError("this model still carries pruning state; convert strip_pruning(model) instead")
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    optimizations = []
    if quantization in ("dynamic", "int8"):
        optimizations.append(tf.lite.Optimize.DEFAULT)
    if sparse:
        optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    converter.optimizations = optimizations
    if quantization == "int8":
        if representative_data is None:
            raise ConfigError("full-integer int8 needs representative_data (a few hundred training or validation samples)")
        samples = _samples(representative_data, calibration_samples)
        check_representative_data(model, samples)
        converter.representative_dataset = lambda: iter(samples)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    elif representative_data is not None:
        raise ConfigError(f"representative_data is only used with quantization='int8', not {quantization!r}")
    with _quiet_converter():
        flatbuffer = converter.convert()
    if output_path is not None:
        atomic_write_bytes(output_path, flatbuffer)
    return flatbuffer


class TFLiteModel:
    """A TFLite flatbuffer in the interpreter: batched ``predict`` with int8 (de)quantization done for you.

    Example::

        tfl = TFLiteModel(convert_to_tflite(model, "int8", split.x_val))
        logits = tfl.predict(split.x_test)
    """

    def __init__(self, model: bytes | str | os.PathLike, num_threads: int | None = 1):
        if isinstance(model, (str, os.PathLike)):
            model = Path(model).read_bytes()
        self.content = bytes(model)
        try:
            self.interpreter = interpreter_class()(model_content=self.content, num_threads=num_threads)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise CorruptFileError(f"not a valid TFLite flatbuffer: {exc}") from None
        self.inputs = self.interpreter.get_input_details()
        self.outputs = self.interpreter.get_output_details()
        if len(self.inputs) != 1 or len(self.outputs) != 1:
            raise ConfigError(
                f"TFLiteModel runs single-input, single-output models; this one has "
                f"{len(self.inputs)} inputs and {len(self.outputs)} outputs"
            )
        self._batch = int(self.inputs[0]["shape"][0])

    @property
    def size_bytes(self) -> int:
        """Bytes of the flatbuffer."""
        return len(self.content)

    @property
    def gzip_bytes(self) -> int:
        """Bytes of the flatbuffer after gzip -9."""
        return gzip_size(self.content)

    def _check(self, x: np.ndarray) -> None:
        expected = tuple(int(d) for d in self.inputs[0]["shape_signature"][1:])
        if x.shape[1:] != expected and not any(d == -1 for d in expected):
            raise ConfigError(
                f"input {self.inputs[0]['name']!r} takes samples of shape {expected}, got {x.shape[1:]}"
                + ("; Keras/TFLite take NHWC, transpose with x.transpose(0, 2, 3, 1)" if x.ndim == 4 else "")
            )

    def _run(self, batch: np.ndarray) -> np.ndarray:
        detail = self.inputs[0]
        if batch.shape[0] != self._batch:
            self.interpreter.resize_tensor_input(detail["index"], list(batch.shape))
            self.interpreter.allocate_tensors()
            self._batch = batch.shape[0]
        if detail["dtype"] != np.float32:
            scale, zero = detail["quantization"]
            info = np.iinfo(detail["dtype"])
            if scale:  # a quantized input (full-integer int8)
                batch = np.round(batch / scale + zero)
            batch = np.clip(batch, info.min, info.max).astype(detail["dtype"])  # else integer ids, as given
        self.interpreter.set_tensor(detail["index"], batch)
        self.interpreter.invoke()
        out = self.outputs[0]
        result = self.interpreter.get_tensor(out["index"])
        if out["dtype"] != np.float32:
            scale, zero = out["quantization"]
            result = (result.astype(np.float32) - zero) * scale if scale else result.astype(np.float32)
        return result

    def predict(self, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Float outputs for ``x`` (floats, quantized for int8 models; or integer ids for an Embedding), in batches."""
        x = np.asarray(x, dtype=np.float32)
        self._check(x)
        return np.concatenate([self._run(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])

    __call__ = predict


def _accuracy(outputs: np.ndarray, y: np.ndarray) -> float:
    return float((outputs.argmax(axis=-1) == np.asarray(y)).mean())


def time_tflite_models(
    models: dict[str, TFLiteModel], sample: np.ndarray, repeats: int = 50, warmup: int = 5
) -> dict[str, float]:
    """Median milliseconds per ``predict(sample)``, interleaving the models (A B C A B C ...).

    Example::

        time_tflite_models({"fp32": a, "int8": b}, x_test[:1])  # {"fp32": 0.05, "int8": 0.03}
    """
    times: dict[str, list[float]] = {name: [] for name in models}
    for round_index in range(warmup + repeats):
        for name, model in models.items():
            started = time.perf_counter()
            model.predict(sample, batch_size=len(sample))
            if round_index >= warmup:
                times[name].append((time.perf_counter() - started) * 1000)
    return {name: float(np.median(values)) for name, values in times.items()}


def evaluate_tflite(
    model: TFLiteModel | bytes | str | os.PathLike,
    x: np.ndarray,
    y: np.ndarray,
    latency_repeats: int = 50,
    num_threads: int | None = 1,
) -> dict[str, float | int]:
    """Accuracy on ``(x, y)``, batch-1 median latency (ms), raw and gzip size of a TFLite model.

    Example::

        evaluate_tflite(flatbuffer, split.x_test, split.y_test)
        # {"accuracy": 0.97, "latency_ms": 0.04, "size_bytes": 610000, "gzip_bytes": 560000}
    """
    tfl = model if isinstance(model, TFLiteModel) else TFLiteModel(model, num_threads=num_threads)
    latency = time_tflite_models({"model": tfl}, np.asarray(x[:1], np.float32), repeats=latency_repeats)["model"]
    return {
        "accuracy": _accuracy(tfl.predict(x), y),
        "latency_ms": latency,
        "size_bytes": tfl.size_bytes,
        "gzip_bytes": tfl.gzip_bytes,
    }


def compare_tflite(
    dense: Any,
    pruned: Any,
    test_data: tuple[np.ndarray, np.ndarray],
    representative_data: Any,
    out_dir: str | os.PathLike | None = None,
    *,
    latency_repeats: int = 50,
    num_threads: int | None = 1,
    keras_accuracy: Callable[[Any], float] | None = None,
) -> TFLiteComparison:
    """Dense fp32 / pruned fp32 / pruned int8 dynamic / pruned int8 full, measured in the interpreter.

    Writes ``dense.tflite``, ``pruned.tflite``, ``pruned.int8-dynamic.tflite`` and
    ``pruned.int8-full.tflite`` to ``out_dir`` when given. Latency is batch 1, interleaved.

    Example::

        comparison = compare_tflite(dense, strip_pruning(pruned), (x_test, y_test), x_val, "artifacts")
        comparison.table().print()
    """
    x, y = (np.asarray(v) for v in test_data)
    flatbuffers = {
        "dense fp32": convert_to_tflite(dense),
        "pruned fp32": convert_to_tflite(pruned),
        "pruned int8 dynamic": convert_to_tflite(pruned, "dynamic"),
        "pruned int8 full": convert_to_tflite(pruned, "int8", representative_data),
    }
    files = {
        "dense fp32": "dense.tflite",
        "pruned fp32": "pruned.tflite",
        "pruned int8 dynamic": "pruned.int8-dynamic.tflite",
        "pruned int8 full": "pruned.int8-full.tflite",
    }
    if out_dir is not None:
        for name, content in flatbuffers.items():
            atomic_write_bytes(Path(out_dir) / files[name], content)
    models = {name: TFLiteModel(content, num_threads=num_threads) for name, content in flatbuffers.items()}
    latency = time_tflite_models(models, x[:1].astype(np.float32), repeats=latency_repeats)
    rows = [
        {
            "name": name,
            "size_bytes": m.size_bytes,
            "gzip_bytes": m.gzip_bytes,
            "accuracy": _accuracy(m.predict(x), y),
            "latency_ms": latency[name],
        }
        for name, m in models.items()
    ]
    score = keras_accuracy or (lambda model: _accuracy(model.predict(x, verbose=0, batch_size=256), y))
    return TFLiteComparison(rows, {"dense": score(dense), "pruned": score(pruned)}, num_threads)


class TFLiteComparison:
    """The measured TFLite variants; ``table()`` renders them (sizes vs dense fp32)."""

    def __init__(self, rows: list[dict[str, Any]], keras_accuracy: dict[str, float], num_threads: int | None):
        self.rows = rows
        self.keras_accuracy = keras_accuracy
        self.num_threads = num_threads

    def row(self, name: str) -> dict[str, Any]:
        """The measured row of one variant, e.g. ``row("pruned int8 full")``."""
        for row in self.rows:
            if row["name"] == name:
                return row
        raise ConfigError(f"no TFLite variant named {name!r}; the rows are {[r['name'] for r in self.rows]}")

    def to_dict(self) -> dict[str, Any]:
        """Rows, Keras accuracies and thread count, JSON-serialisable."""
        return {"rows": self.rows, "keras_accuracy": self.keras_accuracy, "num_threads": self.num_threads}

    def table(self, title: str = "TFLite variants (digits test set)") -> Any:
        """A :class:`prunekit.core.tables.ResultTable` (``.print()`` or ``.to_markdown()``)."""
        from prunekit.core.tables import ResultTable

        base = self.rows[0]
        table = ResultTable(title, ["variant", "size KiB", "gzip KiB", "gzip smaller", "accuracy", "b1 ms", "speedup"])
        for row in self.rows:
            table.add_row(
                row["name"],
                f"{row['size_bytes'] / 1024:,.1f}",
                f"{row['gzip_bytes'] / 1024:,.1f}",
                f"{base['gzip_bytes'] / row['gzip_bytes']:.1f}x",
                f"{row['accuracy']:.2%}",
                f"{row['latency_ms']:.3f}",
                f"{base['latency_ms'] / row['latency_ms']:.2f}x",
            )
        return table
