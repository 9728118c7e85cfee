"""Inference runtimes behind one small interface: ONNX Runtime for ``.onnx``, LiteRT for ``.tflite``, prunekit's
sparse CPU kernels for ``model.sparse.safetensors`` (a compact sparse file; see docs/sparse-inference.md).

A runtime knows its input and output :class:`TensorSpec` s and runs a batch::

    runtime = load_runtime(Path("models/mlp/1/model.onnx"))
    runtime.inputs[0]            # TensorSpec(name='x', shape=(None, 4), dtype=dtype('float32'))
    runtime.run({"x": np.zeros((2, 4), np.float32)})   # {'y': array of shape (2, 3)}

``run`` may be called from several threads at once. ONNX Runtime sessions are thread-safe; a
TFLite interpreter is not, so the TFLite runtime keeps one interpreter per thread.
"""

from __future__ import annotations

import importlib
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from prunekit.artifacts.litert import interpreter_class
from prunekit.errors import ConfigError, CorruptFileError, MissingDependencyError, PrunekitError

#: File names a version directory may hold, and the runtime format each one selects.
MODEL_FILES: dict[str, str] = {
    "model.onnx": "onnx",
    "model.tflite": "tflite",
    "model.onnx.enc": "onnx",  # encrypted at rest (prunekit encrypt); decrypted in memory when served
    "model.tflite.enc": "tflite",
    "model.sparse.safetensors": "sparse",  # a compact sparse file run by prunekit's sparse kernels (SparseTorchRuntime)
}

_ONNX_DTYPES: dict[str, str] = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}
_SERVABLE_KINDS = "fiub"  # float, signed int, unsigned int, bool


class InferenceInputError(PrunekitError, ValueError):
    """The runtime refused a request's inputs (e.g. a size its operators cannot take)."""


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (``None`` for a dimension of any size) and dtype of a model input or output.

    Example::

        TensorSpec("x", (None, 4), np.dtype("float32")).json_shape()   # [-1, 4]
    """

    name: str
    shape: tuple[int | None, ...] | None  # None: rank unknown
    dtype: np.dtype

    def json_shape(self) -> list[int] | None:
        """The shape as TensorFlow Serving writes it: ``-1`` for a dimension of any size."""
        return None if self.shape is None else [-1 if dim is None else dim for dim in self.shape]

    @property
    def batched(self) -> bool:
        """True when the first dimension may take any size, so requests can be stacked on it."""
        return self.shape is not None and len(self.shape) > 0 and self.shape[0] is None


@dataclass(frozen=True)
class RuntimeOptions:
    """How runtimes are created: ``intra_op_threads`` is the thread count of one inference call
    (0 lets the runtime choose).

    Example::

        load_runtime(path, RuntimeOptions(intra_op_threads=2))
    """

    intra_op_threads: int = 1

    def __post_init__(self) -> None:
        if self.intra_op_threads < 0:
            raise ConfigError(f"intra_op_threads should be >= 0, got {self.intra_op_threads}")


class Runtime(Protocol):
    """What the server needs from an inference engine."""

    format: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch: ``feeds`` maps every input name to an array of the input's dtype."""
        ...


def _check_servable(path: Path, specs: tuple[TensorSpec, ...], what: str) -> None:
    for spec in specs:
        if spec.dtype.kind not in _SERVABLE_KINDS:
            raise ConfigError(
                f"{path}: {what} {spec.name!r} has dtype {spec.dtype}, which prunekit serve does not "
                "support (numeric and bool tensors only)"
            )


class OnnxRuntime:
    """An ONNX model run by ONNX Runtime on the CPU.

    Example::

        runtime = OnnxRuntime(Path("model.onnx"))
        runtime.run({"x": np.ones((1, 4), np.float32)})
    """

    format = "onnx"

    def __init__(self, path: Path, options: RuntimeOptions = RuntimeOptions(), content: bytes | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise MissingDependencyError(
                f"serving {path} needs onnxruntime; install it with: pip install 'prunekit[serve]'"
            ) from exc
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = options.intra_op_threads
        session_options.inter_op_num_threads = 1
        session_options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(
                content if content is not None else str(path), sess_options=session_options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own exception types for unreadable models
            raise CorruptFileError(f"cannot load ONNX model {path}: {exc}") from exc
        self.inputs = tuple(self._spec(path, arg, "input") for arg in self._session.get_inputs())
        self.outputs = tuple(self._spec(path, arg, "output") for arg in self._session.get_outputs())
        self._output_names = [spec.name for spec in self.outputs]
        self._invalid_argument: type[Exception] = getattr(
            ort.capi.onnxruntime_pybind11_state, "InvalidArgument", InferenceInputError
        )

    @staticmethod
    def _spec(path: Path, arg: Any, what: str) -> TensorSpec:
        dtype = _ONNX_DTYPES.get(arg.type)
        if dtype is None:
            raise ConfigError(f"{path}: {what} {arg.name!r} has type {arg.type}, which prunekit serve does not support")
        shape = None if arg.shape is None else tuple(d if isinstance(d, int) and d >= 0 else None for d in arg.shape)
        return TensorSpec(arg.name, shape, np.dtype(dtype))

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch through the session (thread-safe)."""
        try:
            values = self._session.run(self._output_names, dict(feeds))
        except self._invalid_argument as exc:
            raise InferenceInputError(f"ONNX Runtime refused the inputs: {exc}") from None
        return dict(zip(self._output_names, values))


class TFLiteRuntime:
    """A TFLite model run by the LiteRT interpreter (``ai_edge_litert``, else ``tf.lite``).

    Inputs and outputs are named after the model's first signature (``serving_default`` for a
    converted Keras model); a model without signatures uses its tensor names.

    Example::

        runtime = TFLiteRuntime(Path("model.tflite"))
        runtime.run({"keras_tensor": np.ones((3, 4), np.float32)})
    """

    format = "tflite"

    def __init__(self, path: Path, options: RuntimeOptions = RuntimeOptions(), content: bytes | None = None) -> None:
        self._interpreter_class = interpreter_class()
        self._model = content if content is not None else path.read_bytes()
        self._path = path
        self._threads = options.intra_op_threads or None
        self._local = threading.local()
        try:
            interpreter = self._new_interpreter()
        except Exception as exc:  # the interpreter raises ValueError/RuntimeError on bad files
            raise CorruptFileError(f"cannot load TFLite model {path}: {exc}") from exc
        signatures = interpreter.get_signature_list()
        self._signature = next(iter(sorted(signatures)), None) if signatures else None
        if self._signature is not None:
            runner = interpreter.get_signature_runner(self._signature)
            input_details = list(runner.get_input_details().items())
            output_details = list(runner.get_output_details().items())
        else:
            input_details = [(_tensor_name(d), d) for d in interpreter.get_input_details()]
            output_details = [(_tensor_name(d), d) for d in interpreter.get_output_details()]
        self.inputs = tuple(_tflite_spec(name, detail) for name, detail in input_details)
        self.outputs = tuple(_tflite_spec(name, detail) for name, detail in output_details)
        self._input_index = {name: detail["index"] for name, detail in input_details}
        self._output_index = {name: detail["index"] for name, detail in output_details}
        self.quantization = {
            name: {"scale": float(detail["quantization"][0]), "zero_point": int(detail["quantization"][1])}
            for name, detail in input_details + output_details
            if detail["quantization"][0] != 0.0
        }
        self._local.interpreter = interpreter
        self._local.runner = self._runner(interpreter)

    def _runner(self, interpreter: Any) -> Any:
        return None if self._signature is None else interpreter.get_signature_runner(self._signature)

    def _new_interpreter(self) -> Any:
        with warnings.catch_warnings():  # tf.lite.Interpreter warns that it is deprecated
            warnings.simplefilter("ignore")
            interpreter = self._interpreter_class(model_content=self._model, num_threads=self._threads)
        interpreter.allocate_tensors()
        return interpreter

    def _thread_interpreter(self) -> tuple[Any, Any]:
        interpreter = getattr(self._local, "interpreter", None)
        if interpreter is None:
            interpreter = self._local.interpreter = self._new_interpreter()
            self._local.runner = self._runner(interpreter)
        return interpreter, self._local.runner

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch on this thread's interpreter."""
        try:
            return self._run(feeds)
        except ValueError as exc:  # the interpreter's message for inputs it cannot take
            raise InferenceInputError(f"the TFLite interpreter refused the inputs: {exc}") from None

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        interpreter, runner = self._thread_interpreter()
        if runner is not None:
            outputs = runner(**feeds)
            return {spec.name: np.array(outputs[spec.name]) for spec in self.outputs}
        for name, value in feeds.items():
            index = self._input_index[name]
            if tuple(interpreter.get_tensor(index).shape) != value.shape:
                interpreter.resize_tensor_input(index, list(value.shape))
                interpreter.allocate_tensors()
        for name, value in feeds.items():
            interpreter.set_tensor(self._input_index[name], value)
        interpreter.invoke()
        return {spec.name: np.array(interpreter.get_tensor(self._output_index[spec.name])) for spec in self.outputs}


def _tensor_name(detail: Mapping[str, Any]) -> str:
    name = str(detail["name"])
    return name[:-2] if name.endswith(":0") else name


def _tflite_spec(name: str, detail: Mapping[str, Any]) -> TensorSpec:
    signature = detail.get("shape_signature")
    dims = signature if signature is not None and len(signature) else detail["shape"]
    shape = tuple(None if int(d) < 0 else int(d) for d in dims)
    return TensorSpec(name, shape, np.dtype(detail["dtype"]))


def model_format(path: Path) -> str:
    """``"onnx"`` or ``"tflite"`` from a model file's name.

    Example::

        model_format(Path("models/mlp/1/model.onnx"))   # "onnx"
    """
    try:
        return MODEL_FILES[path.name]
    except KeyError:
        raise ConfigError(f"{path}: a model file is named one of {sorted(MODEL_FILES)}") from None


def load_runtime(path: Path, options: RuntimeOptions = RuntimeOptions(), content: bytes | None = None) -> Runtime:
    """Open ``model.onnx`` with ONNX Runtime or ``model.tflite`` with LiteRT (from ``content`` when given:
    the verified or decrypted bytes of ``path``, which then never touch the disk).

    Raises :class:`~prunekit.errors.CorruptFileError` for an unreadable file,
    :class:`~prunekit.errors.MissingDependencyError` when the runtime is not installed and
    :class:`~prunekit.errors.ConfigError` for tensors the server cannot carry in JSON.

    Example::

        runtime = load_runtime(Path("models/mlp/1/model.onnx"))
        [spec.name for spec in runtime.inputs]   # ['x']
    """
    runtime: Runtime
    if model_format(path) == "onnx":
        runtime = OnnxRuntime(path, options, content)
    elif model_format(path) == "sparse":
        runtime = SparseTorchRuntime(path, options, content)
    else:
        runtime = TFLiteRuntime(path, options, content)
    _check_servable(path, runtime.inputs, "input")
    _check_servable(path, runtime.outputs, "output")
    return runtime


# --------------------------------------------------------------------------- the sparse runtime
# The third runtime beside ONNX Runtime and LiteRT: a compact sparse file (model.sparse.safetensors,
# written by prunekit.torch.deploy.sparse.save_servable) whose header names the model factory (an
# importable "module:callable" of an installed package) and the input/output specs. The model is
# built on the meta device and loaded straight into prunekit's sparse CPU kernels (load_sparse):
# no dense weight of a sparse layer is ever materialised.

_SPARSE_SERVE_KEY = "serve"  # the header's ``extra`` entry save_servable writes


def _sparse_factory(path: Path, spec: Any) -> Any:
    if not isinstance(spec, str) or ":" not in spec:
        raise ConfigError(f"{path}: the header's serve.factory should be 'module:callable', got {spec!r}")
    module_name, _, attribute = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"{path}: the model factory {spec!r} cannot be imported ({exc}); install the package that defines it"
        ) from None
    if not callable(target):
        raise ConfigError(f"{path}: the model factory {spec!r} is not callable")
    return target


def _sparse_specs(path: Path, value: Any, what: str) -> tuple[TensorSpec, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{path}: the header's serve.{what} should be a non-empty list of tensor specs")
    try:
        return tuple(
            TensorSpec(str(s["name"]), tuple(None if d is None or d < 0 else int(d) for d in s["shape"]), np.dtype(s["dtype"]))
            for s in value
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: a serve.{what} spec is malformed ({exc}); write the file with save_servable") from None


class SparseTorchRuntime:
    """A compact sparse file served through :func:`~prunekit.torch.deploy.sparse.load_sparse`.

    Example::

        runtime = SparseTorchRuntime(Path("models/mlp/3/model.sparse.safetensors"))
        runtime.run({"x": np.zeros((2, 784), np.float32)})
    """

    format = "sparse"

    def __init__(self, path: Path, options: RuntimeOptions = RuntimeOptions(), content: bytes | None = None) -> None:
        if content is not None:
            raise ConfigError(f"{path}: signed or encrypted sparse files are not supported; serve the plain compact file")
        try:
            import torch

            from prunekit.artifacts.compact import read_compact_header
            from prunekit.torch.deploy.sparse import load_sparse, set_threads
        except ImportError as exc:
            raise MissingDependencyError(f"serving {path} needs torch; install it with: pip install 'prunekit[torch]'") from exc
        meta = read_compact_header(path).extra.get(_SPARSE_SERVE_KEY)
        if not isinstance(meta, Mapping):
            raise ConfigError(
                f"{path}: the compact file names no model factory; write it with "
                "prunekit.torch.deploy.sparse.save_servable(model, path, example_input, factory='pkg.module:Model')"
            )
        self.inputs = _sparse_specs(path, meta.get("inputs"), "inputs")
        self.outputs = _sparse_specs(path, meta.get("outputs"), "outputs")
        if options.intra_op_threads:
            set_threads(options.intra_op_threads)
        self._model, self.report = load_sparse(path, _sparse_factory(path, meta.get("factory")))
        self._torch = torch
        self._lock = threading.Lock()  # numba's thread pool and the layer counters are not re-entrant

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch: positional inputs in the order of :attr:`inputs`."""
        torch = self._torch
        args = [torch.from_numpy(np.ascontiguousarray(feeds[spec.name])) for spec in self.inputs]
        with self._lock, torch.no_grad():
            result = self._model(*args)
        values = result if isinstance(result, (tuple, list)) else (result,)
        return {spec.name: value.detach().cpu().numpy() for spec, value in zip(self.outputs, values)}
