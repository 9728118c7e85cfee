"""One table per TFLite file: every weighted op's parameters, nonzeros, sparsity, dense MACs and sparse MACs.

Read from the flatbuffer itself through the TFLite schema and interpreter (``ai_edge_litert``'s,
else TensorFlow's), without Keras: what the converter wrote, folded BatchNorm and quantization
included. A row is an op that multiplies by a constant: ``CONV_2D``,
``DEPTHWISE_CONV_2D``, ``CONV_3D``, ``TRANSPOSE_CONV``, ``FULLY_CONNECTED`` and ``BATCH_MATMUL``
with a constant operand (a weight stored as float16 or in TFLite's sparse encoding, read through
its ``DEQUANTIZE``/``DENSIFY`` op, counts as the op's own). It is named after the weight tensor
the op reads (``digits_cnn_1/conv1_1/convolution`` for the digits CNN's ``conv1``): output tensors carry the
names of every op the converter fused into them, joined by ``;`` (the conv, its BatchNorm, its
activation), and the last layer's is the signature's output name. MACs follow
:mod:`prunekit.keras.measure.summary`, per sample: the counts of one invocation on zeros of the file's
input shapes (batch 1 where the batch is dynamic), divided by that batch, with every tensor's
shape as the interpreter resolved it (a shape the converter left dynamic, such as the rows a
``Dense`` on a sequence multiplies, is known only after a run):

* ``CONV_2D``/``CONV_3D``: output elements × kernel elements × in_channels/groups;
* ``DEPTHWISE_CONV_2D``: output elements × kernel elements;
* ``TRANSPOSE_CONV``: input elements × kernel elements × out_channels;
* ``FULLY_CONNECTED``/``BATCH_MATMUL``: output elements × input features.

A row's params and nonzeros are its weight's plus its bias's (a ``FULLY_CONNECTED`` or
``BATCH_MATMUL`` without a bias operand owns the 1-D constant an ``ADD`` adds to its output, as
the converter writes a ``Dense`` on a sequence). An int8/uint8 weight equal to its
(per-channel) zero point dequantizes to 0 and counts as a zero. Sparse MACs scale a row's MACs by
its weight's density.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from prunekit.core.records import LayerStats, ModelSummary
from prunekit.errors import ConfigError, CorruptFileError, MissingDependencyError

#: TFLite TensorType codes (schema.fbs) of the constant dtypes prunekit reads.
TFLITE_DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 7: np.int16, 9: np.int8}
#: Weighted ops: the input index of their weight and of their bias (None: no bias; ``BATCH_MATMUL``'s weight
#: is whichever operand is constant).
_OPS = {
    "CONV_2D": (1, 2),
    "DEPTHWISE_CONV_2D": (1, 2),
    "CONV_3D": (1, 2),
    "TRANSPOSE_CONV": (1, 3),
    "FULLY_CONNECTED": (1, 2),
    "BATCH_MATMUL": (1, None),
}
#: Ops that only turn a stored weight into the dense float tensor an op reads.
_WEIGHT_DECODERS = ("DEQUANTIZE", "DENSIFY")


def tflite_schema() -> Any | None:
    """The generated TFLite flatbuffer schema module (LiteRT's, else TensorFlow's); None if neither is installed.

    Example::

        schema = tflite_schema()
        model = schema.Model.GetRootAsModel(Path("model.tflite").read_bytes(), 0)
    """
    try:
        from ai_edge_litert import schema_py_generated

        return schema_py_generated
    except ImportError:
        pass
    try:
        from tensorflow.lite.python import schema_py_generated

        return schema_py_generated
    except ImportError:
        return None


def buffer_bytes(model: Any, data: bytes, index: int) -> bytes | None:
    """The bytes of buffer ``index`` of a parsed TFLite ``model`` read from ``data``; None for an empty buffer.

    Models over 2 GiB keep their buffers after the flatbuffer (an offset and a size), smaller ones inside it.

    Example::

        raw = buffer_bytes(model, data, subgraph.Tensors(1).Buffer())
    """
    if index >= model.BuffersLength():
        return None
    buffer = model.Buffers(index)
    if buffer.DataLength():
        return buffer.DataAsNumpy().tobytes()
    if hasattr(buffer, "Offset") and buffer.Offset() > 1:
        return data[buffer.Offset() : buffer.Offset() + buffer.Size()]
    return None


def summarize_tflite(path: str | os.PathLike) -> ModelSummary:
    """Per-op parameters, nonzeros, MACs and sparse MACs of the TFLite file ``path`` (MACs per sample).

    Example::

        summary = summarize_tflite("model.tflite")
        summary.macs, summary.sparsity
        summarize_tflite("model.int8.tflite").table().print()
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"TFLite file {path} does not exist")
    schema = tflite_schema()
    if schema is None:
        raise MissingDependencyError(
            f"reading {path} needs the TFLite schema: pip install ai-edge-litert (or tensorflow, prunekit's keras extra)"
        )
    data = path.read_bytes()
    if not schema.Model.ModelBufferHasIdentifier(data, 0):
        raise CorruptFileError(
            f"{path} is not a TFLite flatbuffer (no 'TFL3' identifier); convert the model "
            "again, e.g. with prunekit.keras.convert_to_tflite"
        )
    try:
        return _File(schema, data, path, _resolved_shapes(data, path)).summary()
    except (IndexError, ValueError, TypeError, AttributeError, struct.error) as exc:
        raise CorruptFileError(
            f"{path} is a damaged TFLite flatbuffer ({type(exc).__name__}: {exc}); convert the model again"
        ) from None


class _File:
    """A parsed TFLite flatbuffer: its op names, and each subgraph's tensors and who produces them."""

    def __init__(self, schema: Any, data: bytes, path: Path, shapes: dict[int, tuple[int, ...]]):
        self.schema = schema
        self.data = data
        self.path = path
        self.shapes = shapes
        self.model = schema.Model.GetRootAsModel(data, 0)
        codes = {value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
        self.op_names = []
        for index in range(self.model.OperatorCodesLength()):
            code = self.model.OperatorCodes(index)
            self.op_names.append(codes.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM"))

    def summary(self) -> ModelSummary:
        main = self.model.Subgraphs(0)
        first_input = main.Tensors(int(main.Inputs(0))) if main.InputsLength() else None
        batch = int(first_input.Shape(0)) if first_input is not None and first_input.ShapeLength() else 1
        rows = []
        for s in range(self.model.SubgraphsLength()):
            subgraph = self.model.Subgraphs(s)
            operators = [subgraph.Operators(i) for i in range(subgraph.OperatorsLength())]
            producers = {int(out): op for op in operators for out in op.OutputsAsNumpy()}
            consumers: dict[int, list[Any]] = {}
            for op in operators:
                for index in op.InputsAsNumpy():
                    consumers.setdefault(int(index), []).append(op)
            for op in operators:
                row = self.row(subgraph, s, op, producers, consumers, max(batch, 1))
                if row is not None:
                    rows.append(row)
        return ModelSummary(rows)

    def row(
        self, subgraph: Any, number: int, op: Any, producers: dict[int, Any], consumers: dict[int, list[Any]], batch: int
    ) -> LayerStats | None:
        """The row of an op that multiplies by a constant (None for any other op)."""
        kind = self.op_names[op.OpcodeIndex()]
        if kind not in _OPS:
            return None
        inputs = [int(i) for i in op.InputsAsNumpy()]
        weight_index, bias_index = _OPS[kind]
        if kind == "BATCH_MATMUL" and self.constant(subgraph, inputs[1], producers) is None:
            weight_index = 0
        weight = self.constant(subgraph, inputs[weight_index], producers)
        if weight is None:
            return None
        bias = None
        if bias_index is not None and bias_index < len(inputs) and inputs[bias_index] >= 0:
            bias = self.constant(subgraph, inputs[bias_index], producers)
        elif kind in ("FULLY_CONNECTED", "BATCH_MATMUL"):
            bias = self.added_bias(subgraph, op, producers, consumers)
        name = subgraph.Tensors(inputs[weight_index]).Name().decode("utf-8", "replace")
        macs = self.macs(kind, lambda index: self.shape(subgraph, number, index), op, inputs, weight.shape) // batch
        params = weight.numel + (bias.numel if bias is not None else 0)
        nonzeros = weight.nonzeros + (bias.nonzeros if bias is not None else 0)
        density = weight.nonzeros / weight.numel if weight.numel else 1.0
        return LayerStats(name, kind, params, nonzeros, macs, round(macs * density))

    def shape(self, subgraph: Any, number: int, index: int) -> tuple[int, ...]:
        """The shape of tensor ``index`` of subgraph ``number``: as resolved in a run for the main subgraph, as stored
        for the others (the bodies of control-flow ops)."""
        return self.shapes[index] if number == 0 else _shape(subgraph.Tensors(index))

    def macs(
        self, kind: str, shape: Callable[[int], tuple[int, ...]], op: Any, inputs: list[int], kernel: tuple[int, ...]
    ) -> int:
        """MACs of one invocation (``shape``: a tensor's shape by index; ``kernel``: the weight's shape)."""
        out_elements = math.prod(shape(int(op.Outputs(0))))
        if kind == "CONV_2D":  # weight (out, h, w, in / groups)
            return out_elements * math.prod(kernel[1:])
        if kind == "DEPTHWISE_CONV_2D":  # weight (1, h, w, in * multiplier)
            return out_elements * math.prod(kernel[1:3])
        if kind == "CONV_3D":  # weight (d, h, w, in / groups, out)
            return out_elements * math.prod(kernel[:-1])
        if kind == "TRANSPOSE_CONV":  # weight (out, h, w, in); inputs (output_shape, weight, input, bias)
            return math.prod(shape(inputs[2])) * math.prod(kernel[:3])
        if kind == "FULLY_CONNECTED":  # weight (out, in)
            return out_elements * kernel[-1]
        left = shape(inputs[0])  # BATCH_MATMUL: output elements × the contracted dim
        table = op.BuiltinOptions()
        options = self.schema.BatchMatMulOptions()
        if table is not None:
            options.Init(table.Bytes, table.Pos)
        return out_elements * (left[-2] if table is not None and options.AdjX() else left[-1])

    def added_bias(self, subgraph: Any, op: Any, producers: dict[int, Any], consumers: dict[int, list[Any]]) -> _Weight | None:
        """The 1-D constant an ``ADD`` adds to the op's output, through ``RESHAPE``s: how the converter writes
        the bias of a ``Dense`` on a sequence (a bias-less ``FULLY_CONNECTED`` between two reshapes)."""
        output = int(op.Outputs(0))
        while len(consumers.get(output, [])) == 1:
            user = consumers[output][0]
            kind = self.op_names[user.OpcodeIndex()]
            if kind == "RESHAPE":
                output = int(user.Outputs(0))
            elif kind == "ADD":
                other = [int(index) for index in user.InputsAsNumpy() if int(index) != output]
                bias = self.constant(subgraph, other[0], producers) if len(other) == 1 else None
                return bias if bias is not None and len(bias.shape) == 1 else None
            else:
                return None
        return None

    def constant(self, subgraph: Any, index: int, producers: dict[int, Any]) -> _Weight | None:
        """Tensor ``index`` if it is a constant, or the constant a ``DEQUANTIZE``/``DENSIFY`` op decodes into it."""
        producer = producers.get(index)
        if producer is not None and self.op_names[producer.OpcodeIndex()] in _WEIGHT_DECODERS:
            index = int(producer.Inputs(0))
        tensor = subgraph.Tensors(index)
        raw = buffer_bytes(self.model, self.data, tensor.Buffer())
        dtype = TFLITE_DTYPES.get(tensor.Type())
        if raw is None or dtype is None:
            return None
        values = np.frombuffer(raw, dtype=dtype)
        shape = _shape(tensor)
        zero = np.zeros((), values.dtype)
        quantization = tensor.Quantization()
        if quantization is not None and quantization.ZeroPointLength() and values.dtype in (np.int8, np.uint8):
            zero = quantization.ZeroPointAsNumpy().astype(values.dtype)
            zero = (
                zero[:1].reshape(())
                if np.all(zero == zero[0])
                else zero.reshape([zero.size if axis == quantization.QuantizedDimension() else 1 for axis in range(len(shape))])
            )
        name = tensor.Name().decode("utf-8", "replace")
        if values.size == math.prod(shape):
            values = values.reshape(shape)
        elif tensor.Sparsity() is None:
            raise CorruptFileError(
                f"{self.path}: tensor {name!r} of shape {shape} holds {values.size} values; convert the model again"
            )
        elif zero.ndim:
            raise ConfigError(
                f"{self.path}: tensor {name!r} is stored sparse with per-channel zero points, which "
                "prunekit cannot count; convert it without sparse=True to inspect it"
            )
        return _Weight(shape, int(np.count_nonzero(values != zero)))


class _Weight:
    """A constant operand: its shape, its element count, and how many of its elements differ from its zero point
    (a sparse-encoded tensor stores only the values of its kept blocks; the others are zeros)."""

    def __init__(self, shape: tuple[int, ...], nonzeros: int):
        self.shape = shape
        self.numel = math.prod(shape)
        self.nonzeros = nonzeros


def _resolved_shapes(data: bytes, path: Path) -> dict[int, tuple[int, ...]]:
    """Every tensor's shape in the main subgraph after one run of the interpreter on zeros (all tensors kept)."""
    import sys
    import warnings

    from prunekit.artifacts.litert import interpreter_class

    interpreter_type = interpreter_class()
    resolvers = sys.modules[interpreter_type.__module__].OpResolverType
    with warnings.catch_warnings():  # tf.lite.Interpreter warns that it is deprecated
        warnings.simplefilter("ignore")
        try:
            interpreter = interpreter_type(
                model_content=data,
                experimental_preserve_all_tensors=True,
                experimental_op_resolver_type=resolvers.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
            )
            interpreter.allocate_tensors()
            for detail in interpreter.get_input_details():
                interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
            interpreter.invoke()
        except (ValueError, RuntimeError) as exc:
            raise CorruptFileError(
                f"{path}: the TFLite interpreter cannot run it ({exc}), so its shapes and MACs "
                "are unknown; convert the model again"
            ) from None
    return {detail["index"]: tuple(int(d) for d in detail["shape"]) for detail in interpreter.get_tensor_details()}


def _shape(tensor: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ()
