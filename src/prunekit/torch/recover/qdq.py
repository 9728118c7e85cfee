"""Writing a trained fake-quant PyTorch model as an int8 QDQ ONNX graph that ONNX Runtime runs with int8 kernels.

The float model is exported unoptimised (one node per layer, parameter names kept); :func:`insert_qdq`
then replaces each quantized weight by int8 codes and a per-channel ``DequantizeLinear`` and puts
``QuantizeLinear``/``DequantizeLinear`` pairs with the learned ranges on each layer's input and output,
which ONNX Runtime fuses into ``QLinearConv``/``QGemm``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunekit.errors import ConfigError, ExportError
from prunekit.torch.recover.fake_quant import LayerState, _weight, bias_scale_floor, weight_codes


@dataclass(frozen=True)
class QatExport:
    """An int8 QDQ ONNX file from QAT: its path, the SQNR of ONNX Runtime's output against the fake-quant
    PyTorch model, the int8 zeros per weight, and the layers left in float (name -> reason).

    Example::

        result = controller.export_onnx(x[:8], "model.int8.onnx")
        result.sqnr_db, result.zeros["fc1.weight"]
    """

    path: Path
    sqnr_db: float
    zeros: dict[str, int]
    float_layers: dict[str, str]


def sqnr_db(reference: np.ndarray, other: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio of ``other`` against ``reference``, in dB (inf when equal).

    Example::

        sqnr_db(np.array([1.0, 2.0]), np.array([1.0, 2.1]))   # 26.99
    """
    reference, other = np.asarray(reference, np.float64), np.asarray(other, np.float64)
    noise = float(((reference - other) ** 2).sum())
    signal = float((reference**2).sum())
    return math.inf if noise == 0 else 10.0 * math.log10(max(signal, 1e-30) / noise)


def insert_qdq(
    proto: Any, layers: Mapping[str, LayerState], quantize_outputs: bool, float_layers: dict[str, str]
) -> dict[str, int]:
    """Turn an exported float ONNX graph into int8 QDQ in place: int8 weights with per-channel ``DequantizeLinear``
    and ``QuantizeLinear``/``DequantizeLinear`` pairs with each layer's observed ranges; returns the int8 zeros
    per weight. A layer not found as a Conv/Gemm/MatMul is added to ``float_layers`` with the reason.

    Example::

    zeros = insert_qdq(program.model_proto, controller.layers, True, controller.float_layers)
    """
    from onnx import helper, numpy_helper

    graph = proto.graph
    initializers = {init.name: init for init in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    producers = {out: node for node in graph.node for out in node.output}
    new_nodes: dict[int, list[Any]] = {}  # insert after node index (-1: at the start)
    index = {id(node): i for i, node in enumerate(graph.node)}
    zeros: dict[str, int] = {}

    def qdq(tensor: str, scale: float, zero_point: int, tag: str, after: int) -> str:
        out = f"{tag}_dequantized"
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.array(scale, np.float32), f"{tag}_scale"),
                numpy_helper.from_array(np.array(zero_point, np.uint8), f"{tag}_zero_point"),
            ]
        )
        new_nodes.setdefault(after, []).extend(
            [
                helper.make_node("QuantizeLinear", [tensor, f"{tag}_scale", f"{tag}_zero_point"], [f"{tag}_quantized"]),
                helper.make_node("DequantizeLinear", [f"{tag}_quantized", f"{tag}_scale", f"{tag}_zero_point"], [out]),
            ]
        )
        return out

    for name, layer in layers.items():
        weight_name = f"{name}.weight"
        if weight_name not in initializers:
            float_layers[name] = "not found in the exported graph; left in float"
            continue
        compute, weight_input = _compute_node(weight_name, consumers)
        if compute is None:
            float_layers[name] = "its weight feeds no Conv/Gemm/MatMul in the exported graph; left in float"
            continue
        floor = bias_scale_floor(layer.module, layer.input_range.qparams()[0])
        mask = layer.mask.cpu() if layer.mask is not None else None
        codes, scales = weight_codes(_weight(layer.module).cpu(), mask, floor.cpu() if floor is not None else None)
        int8 = codes.numpy().astype(np.int8)
        if layer.mask is not None:
            wrong = int(((int8 == 0) != (~layer.mask.cpu()).numpy()).sum())
            if wrong:
                raise ExportError(f"the int8 weight of {name!r} has {wrong} zero(s) that differ from its pruning mask")
        zeros[weight_name] = int((int8 == 0).sum())
        init = initializers[weight_name]
        graph.initializer.remove(init)
        graph.initializer.extend(
            [
                numpy_helper.from_array(int8, f"{weight_name}_quantized"),
                numpy_helper.from_array(scales.numpy().astype(np.float32), f"{weight_name}_scale"),
                numpy_helper.from_array(np.zeros(len(scales), np.int8), f"{weight_name}_zero_point"),
            ]
        )
        new_nodes.setdefault(-1, []).append(
            helper.make_node(
                "DequantizeLinear",
                [f"{weight_name}_quantized", f"{weight_name}_scale", f"{weight_name}_zero_point"],
                [weight_name],
                axis=0,
            )
        )
        activation = next(i for i, value in enumerate(compute.input) if value and value != weight_input)
        producer = producers.get(compute.input[activation])
        after = index[id(producer)] if producer is not None else -1
        compute.input[activation] = qdq(compute.input[activation], *layer.input_range.qparams(), f"{name}.input", after)
        if quantize_outputs:
            output_node = _output_node(compute, f"{name}.bias", consumers)
            original = output_node.output[0]
            raw = f"{name}.output_float"
            output_node.output[0] = raw
            dequantized = qdq(raw, *layer.output_range.qparams(), f"{name}.output", index[id(output_node)])
            rename = helper.make_node("Identity", [dequantized], [original])
            new_nodes.setdefault(index[id(output_node)], []).append(rename)  # consumers keep the old name
    ordered = list(new_nodes.get(-1, []))
    for i, node in enumerate(graph.node):
        ordered.append(node)
        ordered.extend(new_nodes.get(i, []))
    del graph.node[:]
    graph.node.extend(ordered)
    return zeros


def _first(out: Any) -> torch.Tensor:
    if isinstance(out, Mapping):
        out = next(iter(out.values()))
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"the model should return a tensor (or a tuple/dict of them), got {type(out).__name__}")
    return out.detach().float()


def _compute_node(weight: str, consumers: Mapping[str, list[Any]]) -> tuple[Any, str]:
    """The Conv/Gemm/MatMul that ``weight`` feeds (through Transposes), and the name it arrives under."""
    name = weight
    for _ in range(4):
        users = consumers.get(name, [])
        if len(users) != 1:
            return None, name
        node = users[0]
        if node.op_type in ("Conv", "Gemm", "MatMul"):
            return node, name
        if node.op_type not in ("Transpose", "Identity"):
            return None, name
        name = node.output[0]
    return None, name


def _output_node(compute: Any, bias: str, consumers: Mapping[str, list[Any]]) -> Any:
    """The node whose output is the layer's: the compute node, or the Add of the bias after a MatMul."""
    if compute.op_type == "MatMul":
        users = consumers.get(compute.output[0], [])
        if len(users) == 1 and users[0].op_type == "Add" and bias in users[0].input:
            return users[0]
    return compute
