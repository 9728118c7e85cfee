"""One table per ONNX file: every weighted node's parameters, nonzeros, sparsity, dense MACs and sparse MACs.

Framework-free (``onnx`` and numpy): it reads what a file holds, whichever exporter wrote it.
A row is a node that multiplies: ``Conv``, ``ConvTranspose``, ``Gemm`` and ``MatMul`` (with a
weight, or between two activations as in attention), their int8 forms ``QLinearConv``,
``QLinearMatMul``, ``ConvInteger`` and ``MatMulInteger``, and nodes whose weight is fed by a
``DequantizeLinear`` (ONNX Runtime's static QDQ files). MACs follow
:mod:`prunekit.torch.measure.macs`, per sample (the batch dim set to 1 for shape inference):

* convolution: ``output elements × in_channels/groups × kernel elements``; transposed:
  ``input elements × out_channels/groups × kernel elements``;
* Gemm and MatMul: ``output elements × k`` (``m × k × n`` per matrix).

A row's params and nonzeros are its weight's plus its bias's (a ``MatMul`` followed by an
``Add`` of a 1-D constant, as exporters write a linear layer on 3-D inputs, owns that bias;
also after the rescaling of an int8 ``MatMulInteger``).
An int8 weight equal to its zero point dequantizes to 0 and counts as a zero. Sparse MACs
scale a row's MACs by its weight's density, as :func:`prunekit.torch.summarize` does.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prunekit.core.records import LayerStats, ModelSummary
from prunekit.errors import ConfigError, CorruptFileError

#: Input shapes of :func:`summarize_onnx`: one per-sample shape for every input, or one per input name.
InputShapes = Mapping[str, Sequence[int]] | Sequence[int] | None

_CONVS = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3, "ConvTranspose": 1}
_MATMULS = {"MatMul": (0, 1), "Gemm": (0, 1), "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3)}
#: Where an int8 op keeps the zero point of its operand at index i (ONNX operator specs).
_ZERO_POINTS = {"ConvInteger": {1: 3}, "QLinearConv": {3: 5}, "MatMulInteger": {0: 2, 1: 3}, "QLinearMatMul": {0: 2, 3: 5}}
_BIASES = {"Conv": 2, "ConvTranspose": 2, "QLinearConv": 8, "Gemm": 2}


class _Weight:
    """A constant operand: its stored values, and how many differ from the value meaning 0 (its zero point)."""

    def __init__(self, values: np.ndarray, zero_point: np.ndarray | None = None, axis: int = 1):
        self.values = values
        self.numel = int(values.size)
        zero = np.zeros((), values.dtype) if zero_point is None else _broadcast(zero_point, values.ndim, axis)
        self.nonzeros = int(np.count_nonzero(values != zero))


def _broadcast(zero_point: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """A per-tensor zero point as a scalar, a per-channel one laid along ``axis``."""
    if zero_point.size == 1:
        return zero_point.reshape(())
    view = [1] * ndim
    view[axis] = zero_point.size
    return zero_point.reshape(view)


def summarize_onnx(path: str | os.PathLike, input_shapes: InputShapes = None) -> ModelSummary:
    """Per-node parameters, nonzeros, MACs and sparse MACs of the ONNX file ``path`` (MACs per sample).

    ``input_shapes`` gives the per-sample shape (without the batch dim) of inputs whose other
    dims are dynamic, such as a sequence length: one shape for every input (a BERT's
    ``input_ids`` and ``attention_mask`` alike), or a dict by input name. Weights stored in an
    external data file (``model.onnx.data``) are read from beside the file.

    Example::

        summary = summarize_onnx("model.onnx")
        summary.macs, summary.sparsity
        summarize_onnx("bert.onnx", input_shapes=(128,)).table().print()
    """
    import onnx

    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a directory; give the .onnx file inside it")
    if not path.is_file():
        raise ConfigError(f"ONNX file {path} does not exist")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends: the bytes are not an ONNX model
        raise CorruptFileError(f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    if not model.graph.node:
        raise CorruptFileError(f"{path} holds no ONNX graph (an empty or truncated file?); export the model again")
    graph = _Graph(model.graph, path, _inferred_shapes(model, path, input_shapes))
    rows = (graph.row(node, index) for index, node in enumerate(model.graph.node))
    return ModelSummary([row for row in rows if row is not None])


class _Graph:
    """An ONNX graph's constants, value shapes, and who produces and consumes each value."""

    def __init__(self, graph: Any, path: Path, shapes: dict[str, tuple[int, ...]]):
        self.path = path
        self.shapes = shapes
        self.initializers = {tensor.name: tensor for tensor in graph.initializer}
        self.producers = {output: node for node in graph.node for output in node.output}
        self.consumers: dict[str, list[Any]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def row(self, node: Any, index: int) -> LayerStats | None:
        """The row of a node that multiplies (None for any other node, and for a conv without a constant weight)."""
        if node.op_type in _CONVS:
            weight = self.weight(node, _CONVS[node.op_type])
            if weight is None:
                return None
            kernel = weight.values.shape[1] * math.prod(weight.values.shape[2:])
            counted = node.input[0] if node.op_type == "ConvTranspose" else node.output[0]
            macs = math.prod(self.shape(counted, node)) * kernel
            bias = self.weight(node, _BIASES[node.op_type])
        elif node.op_type in _MATMULS:
            a, b = _MATMULS[node.op_type]
            left, right = self.weight(node, a), self.weight(node, b)
            weight = right if right is not None else left
            a_shape = self.shape(node.input[a], node)
            transposed = any(attr.name == "transA" and attr.i for attr in node.attribute)
            macs = math.prod(self.shape(node.output[0], node)) * (a_shape[-2] if transposed else a_shape[-1])
            if weight is None:
                return LayerStats(_name(node, index), node.op_type, 0, 0, macs, macs)
            bias = self.weight(node, _BIASES["Gemm"]) if node.op_type == "Gemm" else self.linear_bias(node)
        else:
            return None
        params = weight.numel + (bias.numel if bias is not None else 0)
        nonzeros = weight.nonzeros + (bias.nonzeros if bias is not None else 0)
        density = weight.nonzeros / weight.numel if weight.numel else 1.0
        return LayerStats(_name(node, index), node.op_type, params, nonzeros, macs, round(macs * density))

    def weight(self, node: Any, index: int) -> _Weight | None:
        """Operand ``index`` of ``node`` if it is a constant: an initializer, or one a DequantizeLinear reads."""
        name = _input(node, index)
        values = self.constant(name)
        if values is not None:
            zero_index = _ZERO_POINTS.get(node.op_type, {}).get(index)
            zero_point = self.constant(_input(node, zero_index)) if zero_index is not None else None
            return _Weight(values, zero_point, _per_channel_axis(node.op_type, index))
        source = self.producers.get(name)
        quantized = self.constant(source.input[0]) if source is not None and source.op_type == "DequantizeLinear" else None
        if source is not None and quantized is not None:
            zero_point = self.constant(_input(source, 2))
            axis = next((attr.i for attr in source.attribute if attr.name == "axis"), 1)
            return _Weight(quantized, zero_point, axis)
        return None

    def constant(self, name: str) -> np.ndarray | None:
        """The values of initializer ``name`` (read from the external data file if it lives there); None if it is not one."""
        from onnx import numpy_helper

        tensor = self.initializers.get(name)
        return None if tensor is None else numpy_helper.to_array(tensor, base_dir=str(self.path.parent))

    def shape(self, name: str, node: Any) -> tuple[int, ...]:
        found = self.shapes.get(name)
        if found is None:
            raise ConfigError(
                f"{self.path}: shape inference could not tell the shape of {name!r} (node "
                f"{node.name or node.op_type!r}), so its MACs are unknown; give the sizes of the "
                "dynamic input dims with input_shapes (prunekit inspect: --input-shape)"
            )
        return found

    def linear_bias(self, node: Any) -> _Weight | None:
        """The 1-D constant added to a MatMul's output, through a QuantizeLinear/DequantizeLinear pair
        (static QDQ files) or the Cast and Mul that rescale a MatMulInteger's output (dynamic int8 files)."""
        rescale = ("Cast", "Mul") if node.op_type == "MatMulInteger" else ()
        output = node.output[0]
        while len(self.consumers.get(output, [])) == 1:
            user = self.consumers[output][0]
            after = self.consumers.get(user.output[0], [])
            if user.op_type in rescale:
                output = user.output[0]
            elif user.op_type == "QuantizeLinear" and [n.op_type for n in after] == ["DequantizeLinear"]:
                output = after[0].output[0]
            elif user.op_type == "Add":
                bias = self.weight(user, 1 - list(user.input).index(output))
                return bias if bias is not None and bias.values.ndim == 1 else None
            else:
                return None
        return None


def _input(node: Any, index: int) -> str:
    """The name of input ``index`` of ``node``; "" for an optional input left out."""
    return node.input[index] if index < len(node.input) else ""


def _name(node: Any, index: int) -> str:
    return node.name or f"{node.op_type}_{index}"


def _per_channel_axis(op_type: str, index: int) -> int:
    """The axis a per-channel zero point runs along: output channels of a conv weight, columns of B, rows of A."""
    if op_type in ("ConvInteger", "QLinearConv"):
        return 0
    return 0 if index == 0 else -1


def _inferred_shapes(model: Any, path: Path, input_shapes: InputShapes) -> dict[str, tuple[int, ...]]:
    """Every value's static shape after shape inference with batch 1 and the dynamic dims filled in."""
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    initializer_names = {tensor.name for tensor in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializer_names]
    if isinstance(input_shapes, Mapping):
        unknown = sorted(set(input_shapes) - {value.name for value in inputs})
        if unknown:
            raise ConfigError(f"{path}: input_shapes names {unknown}, but the inputs are {[v.name for v in inputs]}")
    for value in inputs:
        given = input_shapes.get(value.name) if isinstance(input_shapes, Mapping) else input_shapes
        _fill_dims(value, given, path)
    del graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    shapes = {tensor.name: tuple(tensor.dims) for tensor in graph.initializer}
    for value in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        tensor_type = value.type.tensor_type
        if tensor_type.HasField("shape") and all(dim.HasField("dim_value") for dim in tensor_type.shape.dim):
            shapes[value.name] = tuple(dim.dim_value for dim in tensor_type.shape.dim)
    return shapes


def _fill_dims(value: Any, given: Sequence[int] | None, path: Path) -> None:
    """Set a graph input's batch dim to 1 and its other dynamic dims from ``given`` (checked against static dims)."""
    dims = value.type.tensor_type.shape.dim
    described = "(" + ", ".join(str(d.dim_value) if d.HasField("dim_value") else d.dim_param or "?" for d in dims) + ")"
    if given is not None and len(given) != len(dims) - 1:
        raise ConfigError(
            f"{path}: input {value.name!r} has the shape {described}, so its per-sample shape has "
            f"{len(dims) - 1} dims, but {tuple(given)} was given; give the shape without the batch dim"
        )
    for axis, dim in enumerate(dims):
        if axis == 0:
            if not dim.HasField("dim_value"):
                dim.dim_value = 1
            continue
        size = None if given is None else int(given[axis - 1])
        if dim.HasField("dim_value"):
            if size is not None and size != dim.dim_value:
                raise ConfigError(
                    f"{path}: input {value.name!r} has the shape {described}, but {tuple(given or ())} "
                    f"was given for one sample; give sizes that match its fixed dims"
                )
        elif size is None:
            raise ConfigError(
                f"{path}: input {value.name!r} has the dynamic shape {described} whose size the file "
                "does not fix; give its per-sample shape with input_shapes "
                "(prunekit inspect: --input-shape, e.g. --input-shape 128 for a sequence length)"
            )
        else:
            dim.dim_value = size
