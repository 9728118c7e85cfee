"""Post-training quantization of an exported ONNX file with ONNX Runtime's quantization tools.

Three modes: ``"static"`` int8 (per-channel int8 weights, uint8 activations calibrated on
batches you give, QDQ format: the fast path on x86 CPUs), ``"dynamic"`` int8 (weights only,
activation ranges computed at run time; by default for MatMul/Gemm, where ORT's int8 kernels
are fast), and ``"fp16"`` (weights and compute in float16, float32 inputs and outputs).

Sparsity survives: weights are quantized symmetrically, so a zero maps to the zero point and
dequantizes to exactly 0. This is not taken on trust: after quantizing, every quantized weight
is compared with its float original and any zero that did not stay zero raises
:class:`~prunekit.errors.ExportError`.

A model in ONNX's external-data format (``model.onnx`` plus ``model.onnx.data``, as
:func:`~prunekit.torch.deploy.export_onnx` writes models near 2 GiB) gives a quantized model in the same
format, ``model.int8.onnx`` plus ``model.int8.onnx.data``, moved into place together.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prunekit.artifacts.onnx_data import external_data_files
from prunekit.artifacts.ort import as_samples, feed, input_specs, quiet_exporters, rows, sample_count, session
from prunekit.core.atomic import atomic_paths
from prunekit.errors import ConfigError, ExportError

QUANTIZATION_MODES = ("static", "dynamic", "fp16")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
DYNAMIC_OP_TYPES = ("MatMul", "Gemm")
_CALIBRATION_BATCH = 64


@dataclass(frozen=True)
class QuantizedOnnx:
    """A quantized file and the proof that its zeros survived: weight name -> zeros kept exactly;
    ``data_path`` is its external data file (None when the file is self-contained).

    Example::

        result = quantize_onnx("model.onnx", "model.int8.onnx", "static", calibration_data=x_val)
        result.zeros_preserved["fc1.weight"]  # 117965: every zero of fc1.weight is still 0
    """

    path: Path
    mode: str
    zeros_preserved: dict[str, int]
    quantized_weights: tuple[str, ...]
    data_path: Path | None = None


class _Batches:
    """ORT calibration reader over checked feeds (duck-types ``CalibrationDataReader``)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._feeds = feeds
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self._feeds):
            return None
        self._next += 1
        return self._feeds[self._next - 1]

    def rewind(self) -> None:
        self._next = 0


def calibration_feeds(model_path: str | os.PathLike, data: Any, max_batches: int | None = None) -> list[dict[str, np.ndarray]]:
    """Check calibration data against the model's inputs and turn it into ONNX Runtime feeds.

    ``data`` is one array/tensor of samples, or for several inputs a dict of arrays by input
    name (split into batches of 64), or an iterable of batches: arrays, tensors, dicts by input
    name, or ``(inputs, labels)`` pairs (e.g. a DataLoader; labels are ignored). A batch of the
    wrong shape raises :class:`~prunekit.errors.ConfigError` naming the batch, its shape and the
    expected one.

    Example::

        feeds = calibration_feeds("model.onnx", split.x_val)
        feeds = calibration_feeds("bert.onnx", {"input_ids": ids, "attention_mask": mask})
    """
    specs = input_specs(session(model_path, threads=1))
    if hasattr(data, "detach"):
        data = data.detach().cpu().numpy()
    if isinstance(data, (np.ndarray, Mapping)):
        samples = as_samples(data)
        count = sample_count(samples, "calibration_data")
        batches: Iterable[Any] = [rows(samples, i, i + _CALIBRATION_BATCH) for i in range(0, count, _CALIBRATION_BATCH)]
    elif isinstance(data, Iterable):
        batches = data
    else:
        raise ConfigError(
            f"calibration_data should be an array, a dict of arrays by input name, or an iterable of "
            f"batches, got {type(data).__name__}"
        )
    feeds = []
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        if isinstance(batch, (tuple, list)) and len(batch) == 2 and (len(specs) == 1 or isinstance(batch[0], Mapping)):
            batch = batch[0]  # (inputs, labels) from a DataLoader
        feeds.append(feed(specs, batch, f"calibration batch {i}"))
    if not feeds:
        raise ConfigError("calibration_data is empty; give a few hundred representative input samples")
    return feeds


def _weights(model: Any) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def _float_source(name: str, quantized: np.ndarray, floats: dict[str, np.ndarray]) -> tuple[str, np.ndarray] | None:
    """The float initializer that ``<name>_quantized`` came from, laid out like the quantized one."""
    base = name[: -len("_quantized")]
    for candidate, transpose in ((base, False), (base.removesuffix("_Transposed"), True)):
        source = floats.get(candidate)
        if source is None or source.dtype.kind != "f":
            continue
        source = source.T if transpose and source.ndim == 2 else source
        if source.shape == quantized.shape:
            return candidate, source
    return None


def _broadcast(param: np.ndarray, shape: tuple[int, ...], axis: int | None) -> np.ndarray:
    if param.size == 1:
        return param.reshape(())
    if axis is None:
        matches = [i for i, size in enumerate(shape) if size == param.size]
        axis = matches[0] if matches else 0
    view = [1] * len(shape)
    view[axis] = param.size
    return param.reshape(view)


def check_zeros_preserved(float_path: str | os.PathLike, quantized_path: str | os.PathLike) -> dict[str, int]:
    """Compare every quantized weight with its float original; return zeros kept per weight, raise if one was lost.

    A zero is kept when its quantized value equals the zero point (so it dequantizes to exactly 0).

    Example::

        check_zeros_preserved("model.onnx", "model.int8.onnx")  # {"fc1.weight": 117965, ...}
    """
    import onnx

    floats = _weights(onnx.load(str(float_path)))
    model = onnx.load(str(quantized_path))
    stored = _weights(model)
    axes = {}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear":
            axis = next((a.i for a in node.attribute if a.name == "axis"), None)
            axes[node.input[0]] = axis
    kept: dict[str, int] = {}
    for name, values in stored.items():
        if values.dtype.kind == "f" and values.dtype == np.float16:
            source = floats.get(name)
            if source is not None and source.shape == values.shape:
                lost = int(((source == 0) & (values != 0)).sum())
                if lost:
                    raise ExportError(f"fp16 conversion turned {lost} zero(s) of {name!r} into nonzeros")
                kept[name] = int((source == 0).sum())
            continue
        if not name.endswith("_quantized"):
            continue
        found = _float_source(name, values, floats)
        if found is None:
            continue
        source_name, source = found
        base = name[: -len("_quantized")]
        zero_point = stored.get(f"{base}_zero_point", np.zeros((), values.dtype))
        zero_point = _broadcast(zero_point, values.shape, axes.get(name))
        zeros = source == 0
        lost = int((zeros & (values != zero_point)).sum())
        if lost:
            raise ExportError(
                f"quantization turned {lost} zero weight(s) of {source_name!r} into nonzeros "
                f"({quantized_path}); quantize weights symmetrically (QInt8) to keep sparsity"
            )
        kept[source_name] = int(zeros.sum())
    return kept


def quantize_onnx(
    model_path: str | os.PathLike,
    out_path: str | os.PathLike,
    mode: str = "static",
    calibration_data: Any = None,
    *,
    per_channel: bool = True,
    op_types: Sequence[str] | None = None,
    calibration_method: str = "minmax",
    max_calibration_batches: int | None = None,
) -> QuantizedOnnx:
    """Quantize an ONNX file to int8 (``"static"`` or ``"dynamic"``) or ``"fp16"``; write it atomically.

    ``calibration_data`` (static only) are representative inputs: see :func:`calibration_feeds`.
    ``op_types`` limits which ops are quantized (dynamic default: MatMul and Gemm). Zeros are
    checked to survive (see :func:`check_zeros_preserved`) before the file is moved into place.
    A ``model_path`` with external data gives ``out_path`` plus ``<out_path>.data``, moved into
    place together (replacing an old pair whole).

    Example::

        export_onnx(model, x[:2], "model.onnx")
        quantize_onnx("model.onnx", "model.int8.onnx", "static", calibration_data=split.x_val)
    """
    if mode not in QUANTIZATION_MODES:
        raise ConfigError(f"mode should be one of {', '.join(QUANTIZATION_MODES)}, got {mode!r}")
    if calibration_method not in CALIBRATION_METHODS:
        raise ConfigError(f"calibration_method should be one of {', '.join(CALIBRATION_METHODS)}, got {calibration_method!r}")
    if not Path(model_path).is_file():
        raise ConfigError(f"ONNX file {model_path} does not exist; export the model first with export_onnx")
    if mode == "static" and calibration_data is None:
        raise ConfigError(
            "static quantization needs calibration_data: a few hundred representative inputs "
            "(e.g. the validation images); or use mode='dynamic'"
        )
    feeds = calibration_feeds(model_path, calibration_data, max_calibration_batches) if mode == "static" else None
    external = bool(external_data_files(model_path))
    target = Path(out_path)
    data = target.with_name(f"{target.name}.data")
    with (
        atomic_paths(target, data) as (tmp, tmp_data),
        tempfile.TemporaryDirectory(prefix="prunekit-quant-") as work,
        quiet_exporters(),
    ):
        reference: str | os.PathLike = model_path  # the float graph that was quantized
        try:
            if mode == "fp16":
                _to_fp16(model_path, tmp, external)
            elif mode == "dynamic":
                _dynamic(model_path, tmp, per_channel, op_types, external)
            else:
                reference = _static(model_path, tmp, Path(work), feeds, per_channel, op_types, calibration_method, external)
        except (ConfigError, ExportError):
            raise
        except Exception as exc:  # ORT's quantizer raises bare exceptions naming the node
            raise ExportError(f"ONNX Runtime could not quantize {model_path} ({mode}): {type(exc).__name__}: {exc}") from exc
        kept = check_zeros_preserved(reference, tmp)
        written = data if tmp_data.exists() else None
    return QuantizedOnnx(target, mode, kept, tuple(kept), written)


def _to_fp16(source: str | os.PathLike, target: Path, external: bool) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(model, str(target), save_as_external_data=external, location=f"{target.name}.data")


def _dynamic(source: str | os.PathLike, target: Path, per_channel: bool, op_types: Sequence[str] | None, external: bool) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(source),
        str(target),
        weight_type=QuantType.QInt8,
        per_channel=per_channel,
        op_types_to_quantize=list(op_types or DYNAMIC_OP_TYPES),
        use_external_data_format=external,
        extra_options={"WeightSymmetric": True},
    )


def _static(
    source: str | os.PathLike,
    target: Path,
    work: Path,
    feeds: list[dict[str, np.ndarray]] | None,
    per_channel: bool,
    op_types: Sequence[str] | None,
    method: str,
    external: bool,
) -> Path:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    prepared = work / "prepared.onnx"
    quant_pre_process(
        str(source),
        str(prepared),
        skip_symbolic_shape=True,
        save_as_external_data=external,
        all_tensors_to_one_file=True,
        external_data_location=f"{prepared.name}.data",
    )
    calibrate = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    quantize_static(
        str(prepared),
        str(target),
        _Batches(feeds or []),
        quant_format=QuantFormat.QDQ,
        per_channel=per_channel,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QUInt8,
        calibrate_method=calibrate,
        op_types_to_quantize=list(op_types) if op_types else None,
        use_external_data_format=external,
        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
    )
    return prepared
