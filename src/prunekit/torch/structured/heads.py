"""Attention heads found from the computation: which reshape splits channels into heads.

A projection's output ``(…, H·D)`` reshaped into ``(…, H, D)`` (or a fused ``(…, 3, H, D)``)
cannot keep every position apart: one of the new dimensions must carry the channel identity.
Which one is a fact about what happens *later*: the dimension that becomes the batch-of-heads
dimension (``-3``) of an attention product — ``q @ k.transpose(-2, -1)``, ``attn @ v`` or
``scaled_dot_product_attention`` — is the heads dimension, whatever the module, its attributes or
the literal sizes are called. This pass walks back from every such product through transposes,
permutes, casts, pointwise ops (rotary embeddings, scaling), and the ``chunk``/``split``/
``unbind``/indexing that separates a fused q/k/v, to the reshape that made the dimension, and
records it, so the reshape rule ties each head's ``D`` positions (and its q, k and v rows)
into one channel.
"""

from __future__ import annotations

from typing import Any

from prunekit.torch.structured.labels import normalise_dim, tensor_refs
from prunekit.torch.structured.tracing import OpRecord, TensorRef, Trace

_RESHAPES = {"view", "reshape", "unflatten"}
_SAME_SHAPE = {
    "contiguous", "clone", "to", "float", "half", "bfloat16", "double", "type", "type_as", "detach",
    "mul", "div", "add", "sub", "neg", "dropout", "softmax",
}  # fmt: skip
_PRODUCTS = {"matmul", "bmm"}
_MAX_STEPS = 64


def head_split_dims(trace: Trace) -> tuple[dict[int, int], list[tuple[str, str]]]:
    """For each reshape op (by index) that creates an attention heads dimension, that output
    dimension; and the attention products none of whose operands led back to such a reshape, with
    the reason (``head structure not understood: ...``).

    Example::

        prefer, unknown = head_split_dims(trace_model(model, x))   # {3: 2, 9: 2}: view op 3 makes heads at dim 2
    """
    producer: dict[int, OpRecord] = {}
    for op in trace.ops:
        for ref in tensor_refs(op.outputs):
            producer[ref.vid] = op
    found: dict[int, int] = {}
    unknown: list[tuple[str, str]] = []
    for op in trace.ops:
        operands = _attention_operands(trace, op)
        stops = [_walk_back(trace, producer, ref, len(trace.shapes[ref.vid]) - 3, found) for ref in operands]
        if operands and all(stop is not None for stop in stops):
            unknown.append(
                (op.label, f"head structure not understood: the heads of {op.label} could not be followed back {stops[0]}")
            )
    return found, unknown


def _attention_operands(trace: Trace, op: OpRecord) -> list[TensorRef]:
    if op.name == "scaled_dot_product_attention":
        return [r for r in op.args[:3] if isinstance(r, TensorRef)]
    if op.name in _PRODUCTS:
        refs = [r for r in op.args[:2] if isinstance(r, TensorRef)]
        if len(refs) == 2 and all(len(trace.shapes[r.vid]) >= 4 and trace.param_name(r.vid) is None for r in refs):
            return refs
    return []


def _walk_back(trace: Trace, producer: dict[int, OpRecord], ref: TensorRef, dim: int, found: dict[int, int]) -> str | None:
    """Follow ``dim`` of ``ref`` back to the reshape that made it (recorded in ``found``); ``None``
    when found, else where the walk stopped."""
    for _ in range(_MAX_STEPS):
        op = producer.get(ref.vid)
        if op is None:
            return "to a reshape: they come from a model input or a parameter"
        outs = tensor_refs(op.outputs)
        if op.name in _RESHAPES:
            if len(outs) == 1 and outs[0].vid == ref.vid:
                found.setdefault(op.index, dim)
                return None
            return f"past {op.label}"
        step = _input_dim(trace, op, ref, dim)
        if step is None:
            return f"past {op.label}"
        ref, dim = step
    return "within a bounded number of steps"


def _input_dim(trace: Trace, op: OpRecord, out: TensorRef, dim: int) -> tuple[TensorRef, int] | None:
    """The input value and dimension that ``dim`` of ``out`` comes from, for ops that move dimensions."""
    if op.name in ("cat", "concat", "concatenate"):
        return _cat_dim(trace, op, out, dim)
    inputs = [r for r in op.args if isinstance(r, TensorRef)]
    if not inputs:
        return None
    x = inputs[0]
    in_shape, out_shape = trace.shapes[x.vid], trace.shapes[out.vid]
    name = op.name
    if name in ("transpose", "swapaxes"):
        a = normalise_dim(int(_arg(op, 1, "dim0")), len(out_shape))
        b = normalise_dim(int(_arg(op, 2, "dim1")), len(out_shape))
        return x, b if dim == a else a if dim == b else dim
    if name == "permute":
        dims = _arg(op, 1, "dims")
        order = list(dims) if isinstance(dims, (tuple, list)) else [a for a in op.args[1:] if isinstance(a, int)]
        if len(order) != len(out_shape):
            return None
        return x, normalise_dim(int(order[dim]), len(in_shape))
    if name in ("unbind", "select"):
        axis = normalise_dim(int(_arg(op, 1, "dim", 0)), len(in_shape))
        return x, dim if dim < axis else dim + 1
    if name in ("chunk", "split", "split_with_sizes", "tensor_split", "narrow"):
        return (x, dim) if len(in_shape) == len(out_shape) else None
    if name == "getitem":
        return _getitem_dim(op, x, len(in_shape), dim)
    if name in _SAME_SHAPE or len(in_shape) == len(out_shape):
        for r in inputs:  # follow the operand shaped like the output (rotary: q * cos + rotate(q) * sin)
            shape = trace.shapes[r.vid]
            if tuple(shape) == tuple(out_shape) and trace.param_name(r.vid) is None:
                return r, dim
    return None


def _cat_dim(trace: Trace, op: OpRecord, out: TensorRef, dim: int) -> tuple[TensorRef, int] | None:
    """Through a concatenation along another dimension (partial rotary ``cat((q_rot, q_pass), -1)``,
    a key/value cache ``cat((past, k), -2)``, a legacy empty cache ``cat((tensor([]), k))``): every
    operand of the output's rank carries ``dim`` unchanged; follow the first one computed in the
    model (not a model input or constant) that is not empty along the concatenated axis."""
    tensors = op.args[0] if op.args and isinstance(op.args[0], (tuple, list)) else []
    out_shape = trace.shapes[out.vid]
    axis = normalise_dim(int(_arg(op, 1, "dim", op.kwargs.get("axis", 0))), len(out_shape))
    if axis == dim:
        return None
    operands = [
        r
        for r in tensors
        if isinstance(r, TensorRef) and len(trace.shapes[r.vid]) == len(out_shape) and trace.shapes[r.vid][axis] > 0
    ]
    computed = [r for r in operands if trace.sources.get(r.vid, ("", ""))[0] == "op"]
    chosen = (computed or operands)[:1]
    return (chosen[0], dim) if chosen else None


def _getitem_dim(op: OpRecord, x: TensorRef, in_ndim: int, dim: int) -> tuple[TensorRef, int] | None:
    index = op.args[1] if len(op.args) > 1 else None
    items = list(index) if isinstance(index, tuple) else [index]
    if items.count(Ellipsis) == 1:  # q[..., :r]: the ellipsis stands for every dimension not indexed
        at = items.index(Ellipsis)
        items[at : at + 1] = [slice(None)] * (in_ndim - len(items) + 1)
    if any(item is None or item is Ellipsis or isinstance(item, TensorRef) for item in items):
        return None
    out_dim = 0
    for in_dim, item in enumerate(items + [slice(None)] * (in_ndim - len(items))):
        if isinstance(item, int):
            continue
        if out_dim == dim:
            return x, in_dim
        out_dim += 1
    return None


def _arg(op: OpRecord, index: int, name: str, default: Any = None) -> Any:
    if len(op.args) > index:
        return op.args[index]
    return op.kwargs.get(name, default)


__all__ = ["head_split_dims"]
