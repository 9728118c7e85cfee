"""TensorFlow Serving's REST predict format: JSON requests to validated arrays, outputs to JSON.

Row format: ``{"instances": [row, ...]}`` answered by ``{"predictions": [row, ...]}``; a row is
the input's value without the batch dimension, or ``{"input_name": value, ...}`` when the model
has several inputs (each prediction is then ``{"output_name": value, ...}`` for several outputs).
Columnar format: ``{"inputs": value}`` or ``{"inputs": {"input_name": value, ...}}`` (values with
the batch dimension) answered by ``{"outputs": value}`` or ``{"outputs": {"output_name": value}}``.

Example::

    request = decode_request({"instances": [[1, 2, 3, 4]]}, runtime.inputs, "model 'mlp' version 1")
    request.feeds["x"].shape             # (1, 4)
    encode_response(runtime.run(request.feeds), runtime.outputs, request.row_format)
    # {"predictions": [[0.1, 0.9]]}
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from prunekit.errors import PrunekitError
from prunekit.serve.runtimes import TensorSpec

_TOP_LEVEL_KEYS = ("instances", "inputs", "signature_name")
SIGNATURE_NAME = "serving_default"


class InvalidRequestError(PrunekitError, ValueError):
    """The request body cannot be served; the message says which field is wrong and why."""


@dataclass(frozen=True)
class DecodedRequest:
    """Validated model inputs: one array per input, all with ``rows`` rows."""

    feeds: dict[str, np.ndarray]
    rows: int
    row_format: bool


def parse_json(body: bytes) -> Any:
    """Parse a request body, raising :class:`InvalidRequestError` for anything but JSON.

    Example::

        parse_json(b'{"instances": [1]}')   # {"instances": [1]}
    """
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequestError(f"malformed JSON body: {exc}") from None
    except RecursionError:
        raise InvalidRequestError("malformed JSON body: nested too deeply") from None


def _as_array(value: Any, spec: TensorSpec, where: str, allow_nonfinite: bool) -> np.ndarray:
    """``value`` (nested lists) as an array of ``spec.dtype``, or a message saying what is wrong."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        raise InvalidRequestError(f"{where}: nested lists of different lengths; every row must have the same shape") from None
    kind, target = array.dtype.kind, spec.dtype
    if kind not in "biuf":
        raise InvalidRequestError(f"{where}: expected {target} values, got {_describe(array)}")
    if target.kind == "b":
        if kind != "b":
            raise InvalidRequestError(f"{where}: expected bool values (true/false), got {array.dtype.name} numbers")
        return array
    if kind == "b":
        raise InvalidRequestError(f"{where}: expected {target} values, got booleans")
    if target.kind in "iu":
        info = np.iinfo(target)
        if kind == "f":
            bad = ~np.isfinite(array) | (np.mod(np.nan_to_num(array), 1) != 0)
            if bad.any():
                raise InvalidRequestError(f"{where}: expected {target} values, got the non-integer {array[bad].flat[0]}")
            # numpy promoted the JSON numbers to float64 (e.g. 2**63 beside small ints), which rounds large
            # integers: check the exact Python values before any conversion
            exact = np.asarray(value, dtype=object).reshape(-1)
            outside = next((v for v in exact if not info.min <= v <= info.max), None)
            if outside is not None:
                raise InvalidRequestError(f"{where}: value {outside} lies outside [{info.min}, {info.max}] for {target}")
            return np.array([int(v) for v in exact], dtype=target).reshape(array.shape)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise InvalidRequestError(f"{where}: values must lie in [{info.min}, {info.max}] for {target}")
        return array.astype(target)
    with np.errstate(over="ignore"):  # overflow becomes infinity, refused just below
        converted = array.astype(target)
    if not allow_nonfinite and not np.isfinite(converted).all():
        position = [int(i) for i in np.argwhere(~np.isfinite(converted))[0]]
        raise InvalidRequestError(
            f"{where}: NaN or infinity at index {position} (or a value too large for {target}); "
            "the server was started without --allow-nonfinite"
        )
    return converted


def _describe(array: np.ndarray) -> str:
    if array.dtype.kind == "U":
        return "strings"
    if array.dtype.kind == "O":
        return "values that are not numbers (null, objects, or integers beyond 64 bits)"
    return f"{array.dtype} values"


def _check_shape(array: np.ndarray, spec: TensorSpec, where: str) -> None:
    if spec.shape is None:
        return
    matches = array.ndim == len(spec.shape) and all(want is None or want == got for want, got in zip(spec.shape, array.shape))
    if not matches:
        raise InvalidRequestError(
            f"{where}: expected shape {spec.json_shape()} (-1 means any size, the first dimension "
            f"is the batch), got {list(array.shape)}"
        )


def _named(value: Any, specs: tuple[TensorSpec, ...], where: str) -> dict[str, Any]:
    """``value`` as ``{input_name: value}``, checking it names every input and nothing else."""
    names = [spec.name for spec in specs]
    if not isinstance(value, dict):
        raise InvalidRequestError(f"{where}: the model has {len(names)} inputs, so this must be an object with keys {names}")
    missing = [name for name in names if name not in value]
    unknown = sorted(key for key in value if key not in names)
    if missing or unknown:
        detail = "; ".join(
            part for part in (f"missing {missing}" if missing else "", f"unknown {unknown}" if unknown else "") if part
        )
        raise InvalidRequestError(f"{where}: {detail}; the model's inputs are {names}")
    return value


def _decode_rows(instances: Any, specs: tuple[TensorSpec, ...], label: str, allow_nonfinite: bool) -> dict[str, np.ndarray]:
    if not isinstance(instances, list) or not instances:
        raise InvalidRequestError(f"{label}: 'instances' must be a non-empty list of rows")
    single = len(specs) == 1
    if single and not any(isinstance(row, dict) for row in instances):
        columns: dict[str, list[Any]] = {specs[0].name: instances}
    else:
        columns = {spec.name: [] for spec in specs}
        for index, row in enumerate(instances):
            for name, value in _named(row, specs, f"{label}: instances[{index}]").items():
                columns[name].append(value)
    feeds = {}
    for spec in specs:
        where = f"{label}: input {spec.name!r}"
        array = _as_array(columns[spec.name], spec, where, allow_nonfinite)
        _check_shape(array, spec, where)
        feeds[spec.name] = array
    return feeds


def _decode_columns(inputs: Any, specs: tuple[TensorSpec, ...], label: str, allow_nonfinite: bool) -> dict[str, np.ndarray]:
    if len(specs) == 1 and not isinstance(inputs, dict):
        inputs = {specs[0].name: inputs}
    named = _named(inputs, specs, f"{label}: 'inputs'")
    feeds = {}
    for spec in specs:
        where = f"{label}: input {spec.name!r}"
        array = _as_array(named[spec.name], spec, where, allow_nonfinite)
        if array.ndim == 0:
            raise InvalidRequestError(f"{where}: expected a batch (a list), got a single number")
        _check_shape(array, spec, where)
        feeds[spec.name] = array
    rows = {name: int(array.shape[0]) for name, array in feeds.items()}
    if len(set(rows.values())) > 1:
        raise InvalidRequestError(f"{label}: every input needs the same batch size, got {rows}")
    return feeds


def decode_request(body: Any, inputs: tuple[TensorSpec, ...], label: str, allow_nonfinite: bool = False) -> DecodedRequest:
    """Validate a parsed predict body against the model's inputs and build the input arrays.

    ``label`` (e.g. ``"model 'mlp' version 2"``) starts every error message. Raises
    :class:`InvalidRequestError` for a wrong field, shape, dtype, or NaN (unless allowed).

    Example::

        decode_request({"inputs": {"x": [[1, 2, 3, 4]]}}, runtime.inputs, "model 'mlp'").rows   # 1
    """
    if not isinstance(body, dict):
        raise InvalidRequestError(f"{label}: the body must be a JSON object with 'instances' or 'inputs'")
    unknown = sorted(key for key in body if key not in _TOP_LEVEL_KEYS)
    if unknown:
        raise InvalidRequestError(f"{label}: unknown field(s) {unknown}; expected 'instances' or 'inputs'")
    if ("instances" in body) == ("inputs" in body):
        raise InvalidRequestError(f"{label}: give exactly one of 'instances' (row format) or 'inputs' (columnar format)")
    signature = body.get("signature_name", SIGNATURE_NAME)
    if signature != SIGNATURE_NAME:
        raise InvalidRequestError(f"{label}: unknown signature_name {signature!r}; this server has {SIGNATURE_NAME!r}")
    row_format = "instances" in body
    if row_format:
        feeds = _decode_rows(body["instances"], inputs, label, allow_nonfinite)
    else:
        feeds = _decode_columns(body["inputs"], inputs, label, allow_nonfinite)
    rows = int(next(iter(feeds.values())).shape[0]) if feeds else 0
    if rows == 0:
        raise InvalidRequestError(f"{label}: the batch is empty; send at least one row")
    return DecodedRequest(feeds, rows, row_format)


def encode_response(outputs: Mapping[str, np.ndarray], specs: tuple[TensorSpec, ...], row_format: bool) -> dict[str, Any]:
    """Model outputs as TensorFlow Serving answers them: ``predictions`` rows or ``outputs`` columns.

    Example::

        encode_response({"y": np.array([[1.0, 2.0]])}, runtime.outputs, row_format=True)
        # {"predictions": [[1.0, 2.0]]}
    """
    names = [spec.name for spec in specs]
    columns = {name: np.asarray(outputs[name]).tolist() for name in names}
    if not row_format:
        return {"outputs": columns[names[0]] if len(names) == 1 else columns}
    if len(names) == 1:
        return {"predictions": columns[names[0]]}
    rows = {len(value) if isinstance(value, list) else -1 for value in columns.values()}
    if len(rows) != 1 or -1 in rows:
        raise InvalidRequestError(
            "the model's outputs do not all have the batch as first dimension; use the columnar format ('inputs')"
        )
    count = rows.pop()
    return {"predictions": [{name: columns[name][i] for name in names} for i in range(count)]}


def dump_json(value: Any) -> bytes:
    """Compact JSON bytes; NaN and infinity in outputs are written as TensorFlow Serving does
    (``NaN``, ``Infinity``).

    Example::

        dump_json({"predictions": [1.5]})   # b'{"predictions":[1.5]}'
    """
    return json.dumps(value, separators=(",", ":"), allow_nan=True).encode()


__all__ = ["DecodedRequest", "InvalidRequestError", "decode_request", "dump_json", "encode_response", "parse_json"]
