"""What the metadata endpoint reports about a model file: size, sparsity and quantization,
measured from the file itself, next to what prunekit's export step declared in ``metadata.json``.

Example::

    info = inspect_model(Path("models/mlp/2/model.onnx"))
    info.size_bytes, info.gzip_size_bytes, info.weight_sparsity, info.quantization
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prunekit.core.gzip import gzip_file_size, gzip_size
from prunekit.errors import CorruptFileError

METADATA_FILE = "metadata.json"

_ONNX_QUANT_OPS = {
    "QuantizeLinear",
    "DequantizeLinear",
    "QLinearConv",
    "QLinearMatMul",
    "MatMulInteger",
    "ConvInteger",
    "DynamicQuantizeLinear",
}


@dataclass(frozen=True)
class ModelInfo:
    """Facts about one model file.

    ``weight_sparsity`` is the fraction of exact zeros among the constant tensors of rank >= 2
    (weights, not biases), ``None`` where it cannot be measured. ``quantization`` is ``"int8"``,
    ``"float16"`` or ``"none"`` as seen in the weights. ``declared`` holds ``metadata.json``.

    Example::

        ModelInfo(size_bytes=1024, gzip_size_bytes=512, weight_sparsity=0.5, quantization="none")
    """

    size_bytes: int
    gzip_size_bytes: int
    weight_sparsity: float | None
    quantization: str | None
    declared: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The JSON object the metadata endpoint shows under ``size``, ``sparsity``, ``quantization``."""
        return {
            "size": {"file_bytes": self.size_bytes, "gzip_bytes": self.gzip_size_bytes},
            "sparsity": {"measured": self.weight_sparsity, "declared": self.declared.get("sparsity")},
            "quantization": {"measured": self.quantization, "declared": self.declared.get("quantization")},
            "prunekit_metadata": self.declared,
        }


def read_declared_metadata(version_dir: Path) -> dict[str, Any]:
    """The JSON object in ``version_dir/metadata.json``, or ``{}`` when there is none.

    Example::

        read_declared_metadata(Path("models/mlp/2"))   # {"sparsity": 0.5, ...}
    """
    path = version_dir / METADATA_FILE
    if not path.exists():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"{path}: not a readable JSON file: {exc}") from exc
    if not isinstance(value, dict):
        raise CorruptFileError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def _summarise(weights: list[np.ndarray]) -> tuple[float | None, str]:
    matrices = [w for w in weights if w.ndim >= 2 and w.size]
    total = sum(w.size for w in matrices)
    sparsity = None if total == 0 else round(sum(int(w.size - np.count_nonzero(w)) for w in matrices) / total, 6)
    kinds = {w.dtype for w in matrices}
    if any(dtype in (np.dtype(np.int8), np.dtype(np.uint8)) for dtype in kinds):
        return sparsity, "int8"
    if np.dtype(np.float16) in kinds:
        return sparsity, "float16"
    return sparsity, "none"


def _onnx_weights(path: Path, content: bytes | None = None) -> tuple[float | None, str | None]:
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        return None, None
    model = onnx.load_model_from_string(content) if content is not None else onnx.load(str(path))
    weights = [numpy_helper.to_array(t) for t in model.graph.initializer]
    sparsity, quantization = _summarise(weights)
    if any(node.op_type in _ONNX_QUANT_OPS for node in model.graph.node) and quantization == "none":
        quantization = "int8"
    return sparsity, quantization


def _tflite_weights(path: Path, content: bytes | None = None) -> tuple[float | None, str | None]:
    from prunekit.artifacts.tflite_summary import TFLITE_DTYPES, buffer_bytes, tflite_schema

    schema = tflite_schema()
    if schema is None:
        return None, None
    data = content if content is not None else path.read_bytes()
    model = schema.Model.GetRootAsModel(data, 0)
    weights: list[np.ndarray] = []
    seen: set[int] = set()
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for t in range(subgraph.TensorsLength()):
            tensor = subgraph.Tensors(t)
            dtype = TFLITE_DTYPES.get(tensor.Type())
            index = tensor.Buffer()
            if dtype is None or index in seen:
                continue
            raw = buffer_bytes(model, data, index)
            if raw is None:
                continue
            seen.add(index)
            shape = tuple(int(d) for d in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ()
            array = np.frombuffer(raw, dtype=dtype)
            if int(np.prod(shape)) == array.size:
                weights.append(array.reshape(shape))
    return _summarise(weights)


def _external_data(path: Path) -> tuple[Path, ...]:
    """The external-data files of an ONNX model over 2 GiB (none when ``onnx`` cannot be imported)."""
    if importlib.util.find_spec("onnx") is None:
        return ()
    from prunekit.artifacts.onnx_data import external_data_files

    return external_data_files(path)


def _compact_weights(path: Path, content: bytes | None = None) -> tuple[float | None, str | None]:
    """Sparsity and storage of a compact sparse file, from its header alone."""
    from prunekit.artifacts.compact import read_compact_header

    header = read_compact_header(path)
    return header.sparsity, "int8" if header.dtype == "int8" else "none"


def inspect_model(path: Path, model_format: str, content: bytes | None = None) -> ModelInfo:
    """Measure a model file: its size, compressed size, weight sparsity and quantization
    (of ``content``, the decrypted or verified bytes of ``path``, when given).

    Example::

        inspect_model(Path("models/mlp/2/model.onnx"), "onnx").weight_sparsity   # 0.5
    """
    reader = {"onnx": _onnx_weights, "sparse": _compact_weights}.get(model_format, _tflite_weights)
    if content is not None:
        sparsity, quantization = reader(path, content)
        sizes = (len(content), gzip_size(content))
    else:
        files = [path, *(_external_data(path) if model_format == "onnx" else ())]  # a missing data file: a clear error
        sparsity, quantization = reader(path)
        sizes = (sum(file.stat().st_size for file in files), sum(gzip_file_size(file) for file in files))
    return ModelInfo(
        size_bytes=sizes[0],
        gzip_size_bytes=sizes[1],
        weight_sparsity=sparsity,
        quantization=quantization,
        declared=read_declared_metadata(path.parent),
    )
