"""From a trained fake-quant Keras model to a plain one with kernels on the int8 grid, and to full-int8 TFLite
whose int8 kernels are checked against the PQAT masks.
"""

from __future__ import annotations

import os
from typing import Any

import keras
import numpy as np

from prunekit.errors import ExportError
from prunekit.keras.recover.fold import fold_arrays
from prunekit.keras.recover.quant_layers import _QUANT_CLASSES, _QUANT_TYPES, _channel_axes, _check_model, kernel_codes


def strip_qat(model: Any) -> Any:
    """A plain clone of a fake-quant model: the original layer classes, kernels set to their fake-quantized values.

    Example::

        plain = strip_qat(run.model)   # Dense/Conv2D again; convert it with export_tflite
    """
    _check_model(model)

    def clone(layer: Any) -> Any:
        if isinstance(layer, _QUANT_TYPES):
            config = dict(layer.get_config())
            config.pop("masked", None)
            for key in ("freeze_ranges_after", "batchnorm", "freeze_bn_after"):
                config.pop(key, None)
            base = next(b for b, q in _QUANT_CLASSES if isinstance(layer, q))
            return base.from_config(config)
        return layer.__class__.from_config(layer.get_config())

    plain = keras.models.clone_model(model, clone_function=clone)
    for layer, source in zip(plain.layers, model.layers):
        if isinstance(source, _QUANT_TYPES):
            mask = np.asarray(source.pqat_mask, dtype=np.bool_) if source.pqat_mask is not None else None
            kernel, bias = np.asarray(source.kernel), np.asarray(source.bias) if source.use_bias else None
            if source.batchnorm is not None:
                depthwise = isinstance(source, keras.layers.DepthwiseConv2D)
                kernel, bias = fold_arrays(kernel, bias, source.norm_values(), source.batchnorm["epsilon"], depthwise)
            codes, scale = kernel_codes(kernel, mask, _channel_axes(source))
            layer.kernel.assign(codes.astype(np.float32) * scale)
            if bias is not None:
                layer.bias.assign(bias)
        else:
            for target, value in zip(layer.weights, source.weights):
                target.assign(value)
    return plain


def _int8_kernels(flatbuffer: bytes) -> list[tuple[str, np.ndarray]]:
    from prunekit.artifacts.litert import interpreter_class

    interpreter = interpreter_class()(model_content=flatbuffer)
    interpreter.allocate_tensors()
    found = []
    for detail in interpreter.get_tensor_details():
        if detail["dtype"] == np.int8 and len(detail["shape"]) >= 2:
            try:
                found.append((detail["name"], np.array(interpreter.get_tensor(detail["index"]))))
            except ValueError:
                continue
    return found


def export_tflite(
    model: Any,
    representative_data: Any,
    output_path: str | os.PathLike | None = None,
    *,
    calibration_samples: int = 200,
) -> tuple[bytes, dict[str, int]]:
    """Full-integer int8 TFLite of a fake-quant model (stripped first); returns the flatbuffer and int8 kernel zeros.

    For PQAT layers the int8 kernel must hold exactly the mask's zeros, otherwise
    :class:`~prunekit.errors.ExportError` (and nothing is written).

    Example::

        flatbuffer, zeros = export_tflite(run.model, split.x_val, "model.int8.tflite")
    """
    from prunekit.keras.deploy.tflite import convert_to_tflite

    plain = strip_qat(model)
    flatbuffer = convert_to_tflite(plain, "int8", representative_data, calibration_samples=calibration_samples)
    kernels = _int8_kernels(flatbuffer)
    zeros: dict[str, int] = {}
    for layer in model.layers:
        if not isinstance(layer, _QUANT_TYPES):
            continue
        size = int(np.prod(layer.kernel.shape))
        candidates = [(n, k) for n, k in kernels if k.size == size and f"{layer.name}" in n] or [
            (n, k) for n, k in kernels if k.size == size
        ]
        if layer.pqat_mask is None:
            if candidates:
                zeros[layer.name] = int((candidates[0][1] == 0).sum())
            continue
        expected = int((np.asarray(layer.pqat_mask) == 0).sum())
        counts = [int((k == 0).sum()) for _, k in candidates]
        if expected not in counts:
            raise ExportError(
                f"the int8 TFLite kernel of {layer.name!r} has {counts[:1] or 'no'} zero(s) but its pruning mask has {expected}; "
                "the export would not keep the pruned sparsity"
            )
        zeros[layer.name] = expected
    if output_path is not None:
        from prunekit.core.atomic import atomic_write_bytes

        atomic_write_bytes(output_path, flatbuffer)
    return flatbuffer, zeros
