"""Write the reference profile of an exported artifact, by running it exactly as the server will.

The artifact (``.onnx`` or ``.tflite``) runs on the given reference data in the serving runtime,
so the profile's input and output names, dtypes and layouts are the ones requests will carry
(a full-integer TFLite model gets its float data quantized with the input's scale and zero point,
as a client would send it). The profile lands beside the artifact as ``<file>.profile.json``;
in a model directory ``prunekit serve`` reads ``profile.json`` (or ``model.onnx.profile.json``)
next to ``model.onnx``.

Example::

    profile_artifact("out/pruned.onnx", split.x_test, split.y_test)   # -> out/pruned.onnx.profile.json
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from prunekit.artifacts.profile import ReferenceProfile, build_profile, profile_path_for
from prunekit.errors import ConfigError
from prunekit.serve.runtimes import OnnxRuntime, Runtime, TFLiteRuntime


def _runtime(path: Path) -> Runtime:
    if not path.is_file():
        raise ConfigError(f"artifact {path} does not exist")
    if path.suffix == ".onnx":
        return OnnxRuntime(path)
    if path.suffix == ".tflite":
        return TFLiteRuntime(path)
    raise ConfigError(f"{path}: a reference profile is made for an .onnx or .tflite file")


def _feeds(runtime: Runtime, data: Any, path: Path) -> dict[str, np.ndarray]:
    names = [spec.name for spec in runtime.inputs]
    if isinstance(data, Mapping):
        if set(data) != set(names):
            raise ConfigError(f"{path} takes inputs {names}; the reference data has {sorted(data)}")
        given = {name: np.asarray(data[name]) for name in names}
    elif len(names) == 1:
        given = {names[0]: np.asarray(data)}
    else:
        raise ConfigError(f"{path} takes {len(names)} inputs {names}; pass the reference data as a dict by input name")
    quantization = getattr(runtime, "quantization", {})
    feeds = {}
    for spec in runtime.inputs:
        array = given[spec.name]
        if spec.dtype.kind in "iu" and array.dtype.kind == "f":
            if spec.name not in quantization:
                raise ConfigError(f"{path}: input {spec.name!r} takes {spec.dtype} but the reference data is {array.dtype}")
            q = quantization[spec.name]
            info = np.iinfo(spec.dtype)
            array = np.clip(np.round(array / q["scale"] + q["zero_point"]), info.min, info.max)
        feeds[spec.name] = np.ascontiguousarray(array, dtype=spec.dtype)
    return feeds


def profile_artifact(
    artifact: str | os.PathLike[str],
    data: Any,
    labels: Any = None,
    *,
    out: str | os.PathLike[str] | None = None,
    batch_size: int = 256,
    max_features: int = 256,
) -> ReferenceProfile:
    """Profile ``artifact`` on reference ``data`` (an array, or a dict by input name) and write it atomically.

    ``labels`` (a class per row) records the reference accuracy. ``out`` defaults to
    :func:`profile_path_for`; it may not be the artifact itself. Images are profiled per channel on
    axis 1 for ONNX (NCHW) and the last axis for TFLite (NHWC) when a sample has more than
    ``max_features`` values, else per element.

    Example::

        profile = profile_artifact("model.tflite", split.x_val, split.y_val)
        profile.accuracy   # 0.97
    """
    path = Path(artifact)
    target = Path(out) if out is not None else profile_path_for(path)
    if target.resolve() == path.resolve():
        raise ConfigError(f"the profile of {path} would overwrite it; choose another out path")
    if batch_size < 1:
        raise ConfigError(f"batch_size should be >= 1, got {batch_size}")
    runtime = _runtime(path)
    feeds = _feeds(runtime, data, path)
    quantization = getattr(runtime, "quantization", {})
    rows = {name: len(array) for name, array in feeds.items()}
    if len(set(rows.values())) != 1 or 0 in rows.values():
        raise ConfigError(f"reference data for {path} should hold the same non-zero number of rows per input, got {rows}")
    total = next(iter(rows.values()))
    parts: dict[str, list[np.ndarray]] = {spec.name: [] for spec in runtime.outputs}
    for start in range(0, total, batch_size):
        result = runtime.run({name: array[start : start + batch_size] for name, array in feeds.items()})
        for name, value in result.items():
            parts[name].append(value)
    outputs = {name: np.concatenate(values) for name, values in parts.items()}
    profile = build_profile(
        feeds,
        outputs,
        labels=None if labels is None else np.asarray(labels),
        channel_axis=1 if runtime.format == "onnx" else -1,
        max_features=max_features,
        source=path.name,
        output_quantization={
            spec.name: (quantization[spec.name]["scale"], quantization[spec.name]["zero_point"])
            for spec in runtime.outputs
            if spec.name in quantization
        },
    )
    profile.save(target)
    return profile


__all__ = ["profile_artifact"]
