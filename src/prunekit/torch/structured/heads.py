"""Attention heads found from the computation: which reshape splits channels into heads.

A projection's output ``(…, H·D)`` reshaped into ``(…, H, D)`` (or a fused ``(…, 3, H, D)``)
cannot keep every position apart: one of the new dimensions must carry the channel identity.
Which one is a fact about what happens *later*: the dimension that becomes a batch dimension of
an attention product — the heads of ``q @ k.transpose(-2, -1)``, ``attn @ v``,
``scaled_dot_product_attention``, or a letter an ``einsum`` carries from both operands to its
output — is the heads dimension, whatever the module, its attributes or the literal sizes are
called. This pass walks back from every such product through transposes, permutes, casts,
pointwise ops (rotary embeddings, scaling), concatenations, the ``chunk``/``split``/``unbind``/
indexing that separates a fused q/k/v, ``einsum`` and matrix products (by their batch letters
and dimensions), index writes into a buffer (``buf[rows] = k``: the buffer's dimension is the
written value's), strided views (``as_strided``, ``unfold``) that keep the dimension, and
reshapes that merge the heads into the batch (``(b, h, t, d) -> (b·h, t, d)``) or split them
out again, to the reshape that made the dimension, and records it, so the reshape rule ties
each head's ``D`` positions (and its q, k and v rows) into one channel.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from prunekit.torch.structured.labels import normalise_dim, tensor_refs
from prunekit.torch.structured.rules.indexing import selection_plan, strided_sources, write_items
from prunekit.torch.structured.rules.shape import reshape_segments
from prunekit.torch.structured.tracing import OpRecord, TensorRef, Trace

_RESHAPES = {"view", "reshape", "unflatten", "flatten", "squeeze", "unsqueeze", "view_as", "reshape_as", "ravel"}
_SIZED_RESHAPES = {"view", "reshape", "unflatten"}  # the ones that can make a heads dimension of one head
_SAME_SHAPE = {
    "contiguous", "clone", "to", "float", "half", "bfloat16", "double", "type", "type_as", "detach",
    "mul", "div", "add", "sub", "neg", "dropout", "softmax",
}  # fmt: skip
_PRODUCTS = {"matmul", "bmm"}
_WRITES = {"setitem", "index_put", "slice_scatter", "select_scatter"}
_VIEWS = {"getitem", "narrow"}  # views a write in place can land in
_DUNDER_IN_PLACE = {"add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "and", "or", "xor"}
_MAX_VISITS = 256  # (value, dimension) pairs one product's walk may visit: the walk stays linear in the model

Step = tuple[TensorRef, int]


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
    writes = _writes_into_views(trace, producer)
    found: dict[int, int] = {}
    unknown: list[tuple[str, str]] = []
    for op in trace.ops:
        seeds, reported = _product_heads(trace, op)
        if not seeds:
            continue
        stop = _walk_back(trace, producer, writes, seeds, found)
        if stop is not None and reported:
            unknown.append(
                (op.label, f"head structure not understood: the heads of {op.label} could not be followed back {stop}")
            )
    return found, unknown


def _product_heads(trace: Trace, op: OpRecord) -> tuple[list[Step], bool]:
    """The operand dimensions that hold an attention product's heads, and whether the product is
    one whose heads must be found (a 4-D product; an ``einsum`` is followed where it can be but
    not reported). A 3-D product (heads merged into the batch, ``(b·h, t, d)``) starts no walk: where
    the batch meets a per-token mask repeated over heads (a fixed position), choosing heads there
    would keep them all, where the default choice keeps the head width prunable."""
    if op.name == "scaled_dot_product_attention":
        refs = [r for r in op.args[:3] if isinstance(r, TensorRef)]
        return [(r, len(trace.shapes[r.vid]) - 3) for r in refs], True
    if op.name in _PRODUCTS:
        refs = [r for r in op.args[:2] if isinstance(r, TensorRef)]
        ranks = [len(trace.shapes[r.vid]) for r in refs]
        if len(refs) == 2 and min(ranks) >= 4 and all(trace.param_name(r.vid) is None for r in refs):
            return [(r, n - 3) for r, n in zip(refs, ranks)], True
        return [], False
    if op.name == "einsum":
        terms, operands, rhs = _einsum_terms(op)
        computed = [(t, r) for t, r in zip(terms, operands) if trace.param_name(r.vid) is None]
        shared = [ch for ch in rhs if sum(ch in t for t, _ in computed) >= 2]
        contracted = any(ch not in rhs for t, _ in computed for ch in t)
        if len(computed) >= 2 and contracted:
            return [
                (r, t.index(ch)) for ch in shared for t, r in computed if ch in t and trace.shapes[r.vid][t.index(ch)] > 1
            ], False
    return [], False


def _einsum_terms(op: OpRecord) -> tuple[list[str], list[TensorRef], str]:
    """The subscripts of each operand and of the output of an ``einsum`` (empty when it has an
    ellipsis or an implicit output)."""
    equation = op.args[0] if op.args and isinstance(op.args[0], str) else ""
    operands = list(op.args[1:])
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = list(operands[0])
    lhs, arrow, rhs = equation.replace(" ", "").partition("->")
    terms = lhs.split(",")
    refs = [r for r in operands if isinstance(r, TensorRef)]
    if not arrow or "..." in equation or len(terms) != len(operands) or len(refs) != len(operands):
        return [], [], ""
    return terms, refs, rhs


def _writes_into_views(trace: Trace, producer: dict[int, OpRecord]) -> dict[int, list[tuple[OpRecord, OpRecord]]]:
    """In-place ops on a view of a tensor (``buf[:, 1:-1].copy_(k)``, ``buf.narrow(1, 0, t).add_(v)``),
    by the viewed tensor: the tensor holds what they write, though no op returns it anew."""
    writes: dict[int, list[tuple[OpRecord, OpRecord]]] = {}
    for op in trace.ops:
        target = op.args[0] if op.args and isinstance(op.args[0], TensorRef) else None
        if target is None or not _in_place(op) or op.name in _VIEWS:
            continue
        view = producer.get(target.vid)
        if view is not None and view.name in _VIEWS and view.args and isinstance(view.args[0], TensorRef):
            writes.setdefault(view.args[0].vid, []).append((view, op))
    return writes


def _in_place(op: OpRecord) -> bool:
    """Whether an op writes into its first argument (``copy_``, ``x += y``, ``x[i] = y``)."""
    name = getattr(op.func, "__name__", "")
    if name.startswith("__") and name.endswith("__"):
        return name == "__setitem__" or (name.startswith("__i") and name[3:-2] in _DUNDER_IN_PLACE)
    return name.endswith("_") and not name.startswith("_")


def _walk_back(
    trace: Trace,
    producer: dict[int, OpRecord],
    writes: dict[int, list[tuple[OpRecord, OpRecord]]],
    seeds: list[Step],
    found: dict[int, int],
) -> str | None:
    """Follow each seed's dimension back to the reshape that made it (recorded in ``found``),
    through every operand that carries it; ``None`` when one was found, else where the first
    seed's walk stopped."""
    queue = deque(seeds)
    seen: set[tuple[int, int]] = set()
    hit, stop = False, None
    while queue and len(seen) < _MAX_VISITS:
        ref, dim = queue.popleft()
        if (ref.vid, dim) in seen:
            continue
        seen.add((ref.vid, dim))
        for view, write in writes.get(ref.vid, ()):
            queue.extend(_written_through_view(trace, view, write, dim))
        op = producer.get(ref.vid)
        if op is None:
            stop = stop or "to a reshape: they come from a model input or a parameter"
            continue
        try:
            steps, made = _step(trace, op, ref, dim, found)
        except (TypeError, ValueError, IndexError, KeyError):  # an argument form a step does not know: stop there
            steps, made = [], False
        hit = hit or made
        if not steps and not made:
            stop = stop or f"past {op.label}"
        queue.extend(steps)
    return None if hit else (stop or "within a bounded number of steps")


def _step(trace: Trace, op: OpRecord, out: TensorRef, dim: int, found: dict[int, int]) -> tuple[list[Step], bool]:
    """The input dimensions that ``dim`` of ``out`` comes from, and whether ``op`` is the reshape
    that made it."""
    if op.name in _RESHAPES:
        return _reshape_step(trace, op, out, dim, found)
    if op.name == "einsum":
        terms, operands, rhs = _einsum_terms(op)
        if dim >= len(rhs):
            return [], False
        letter = rhs[dim]
        return [(r, t.index(letter)) for t, r in zip(terms, operands) if letter in t and trace.param_name(r.vid) is None], False
    if op.name in _PRODUCTS:
        return _product_step(trace, op, out, dim), False
    if op.name in _WRITES:
        return _setitem_step(trace, op, dim), False
    if op.name == "as_strided":
        return _strided_step(trace, op, out, dim), False
    step = _input_dim(trace, op, out, dim)
    return step, False


def _written_through_view(trace: Trace, view: OpRecord, write: OpRecord, dim: int) -> list[Step]:
    """Dimension ``dim`` of a tensor in the operands written in place into ``view`` of it (a slice
    or ``narrow`` that keeps the dimension), aligned from the last dimension as they broadcast."""
    base = view.args[0]
    if view.name == "narrow":
        at: int | None = dim
    else:
        index = view.args[1] if len(view.args) > 1 else None
        plan = selection_plan(
            trace.shapes[base.vid], list(index) if isinstance(index, tuple) else [index], lambda r: trace.shapes[r.vid]
        )
        at = next((k for k, (d, _) in enumerate(plan[0]) if d == dim), None) if plan is not None else None
    outs = tensor_refs(view.outputs)
    if at is None or len(outs) != 1:
        return []
    view_shape = trace.shapes[outs[0].vid]
    steps = []
    for value in [r for r in write.args[1:] if isinstance(r, TensorRef)]:
        shape = trace.shapes[value.vid]
        d = len(shape) - (len(view_shape) - at)
        if 0 <= d and shape[d] == view_shape[at] and trace.param_name(value.vid) is None:
            steps.append((value, d))
    return steps


def _reshape_step(trace: Trace, op: OpRecord, out: TensorRef, dim: int, found: dict[int, int]) -> tuple[list[Step], bool]:
    """Through a reshape: a dimension passed whole or merged from several (the batch and the heads,
    ``(b·h, t, d)``) is followed into its input dimensions; a dimension split from a wider one is
    the one this reshape made, and if it is the innermost of its split (``b·h -> (b, h)``, heads
    merged into the batch before) the walk also goes on into the merged dimension."""
    inputs = [r for r in op.args if isinstance(r, TensorRef)]
    if len(tensor_refs(op.outputs)) != 1 or not inputs:
        return [], False
    x = inputs[0]
    in_shape, out_shape = trace.shapes[x.vid], trace.shapes[out.vid]
    if out_shape[dim] == 1:
        if op.name in _SIZED_RESHAPES:
            found.setdefault(op.index, dim)  # a single head: its width is kept whole by the reshape rule
            return [], True
        return [], False
    segment = _segment_of(in_shape, out_shape, dim)
    if segment is None:
        return [], False
    seg_in, seg_out = segment
    if len(seg_out) == 1:
        return [(x, d) for d in seg_in], False
    found.setdefault(op.index, dim)
    if len(seg_in) == 1 and dim == seg_out[-1]:
        return [(x, seg_in[0])], False  # un-merged: the reshape that made the heads is further back
    return [], True


def _segment_of(in_shape: tuple[int, ...], out_shape: tuple[int, ...], dim: int) -> tuple[list[int], list[int]] | None:
    """The input and output dimensions (of more than one position) that a reshape maps onto each
    other as a block, for the block holding output dimension ``dim`` (as ``reshape_labels`` pairs them)."""
    if 0 in in_shape:
        return None
    return next(((seg_in, seg_out) for seg_in, seg_out in reshape_segments(in_shape, out_shape) if dim in seg_out), None)


def _product_step(trace: Trace, op: OpRecord, out: TensorRef, dim: int) -> list[Step]:
    """Through a matrix product: a batch dimension comes from each operand's broadcast batch
    dimension of the same size, the rows from the first operand, the columns from the second."""
    refs = [r for r in op.args[:2] if isinstance(r, TensorRef)]
    out_shape = trace.shapes[out.vid]
    if len(refs) != 2 or any(len(trace.shapes[r.vid]) < 2 for r in refs):
        return []
    a, b = refs
    from_end = len(out_shape) - dim
    if from_end == 2:
        return [(a, len(trace.shapes[a.vid]) - 2)]
    if from_end == 1:
        return [(b, len(trace.shapes[b.vid]) - 1)]
    steps = []
    for r in refs:
        shape = trace.shapes[r.vid]
        d = len(shape) - from_end
        if d >= 0 and shape[d] == out_shape[dim] and trace.param_name(r.vid) is None:
            steps.append((r, d))
    return steps


def _setitem_step(trace: Trace, op: OpRecord, dim: int) -> list[Step]:
    """Through ``x[index] = value`` (and ``index_put``, ``slice_scatter``, ``select_scatter``): the
    dimension is ``x``'s, and, where ``x`` is taken whole along it, also the written value's
    (aligned from the last dimension, as the value broadcasts)."""
    x = op.args[0] if op.args and isinstance(op.args[0], TensorRef) else None
    if x is None:
        return []
    steps: list[Step] = [(x, dim)]
    written = write_items(op, len(trace.shapes[x.vid]))
    if written is None or not isinstance(written[1], TensorRef):
        return steps
    items, value = written
    plan = selection_plan(trace.shapes[x.vid], items, lambda r: trace.shapes[r.vid])
    if plan is None:
        return steps
    targets = [d for d, _ in plan[0]]
    value_shape = trace.shapes[value.vid]
    if dim not in targets or len(value_shape) > len(targets):
        return steps
    at = len(value_shape) - (len(targets) - targets.index(dim))
    if at >= 0 and value_shape[at] == trace.shapes[x.vid][dim]:
        steps.append((value, at))
    return steps


def _strided_step(trace: Trace, op: OpRecord, out: TensorRef, dim: int) -> list[Step]:
    """Through ``as_strided``: the input dimension with the output dimension's size and stride,
    where its index can be read back from the memory offset (see ``strided_sources``)."""
    x = op.args[0] if op.args and isinstance(op.args[0], TensorRef) else None
    stride = _arg(op, 2, "stride")
    in_strides = trace.strides.get(x.vid) if x is not None else None
    if x is None or in_strides is None or not isinstance(stride, (tuple, list)):
        return []
    out_shape = trace.shapes[out.vid]
    if len(stride) != len(out_shape):
        return []
    sources = strided_sources(trace.shapes[x.vid], in_strides, out_shape, [int(s) for s in stride])
    return [(x, sources[dim])] if dim in sources else []


def _input_dim(trace: Trace, op: OpRecord, out: TensorRef, dim: int) -> list[Step]:
    """The input values and dimensions that ``dim`` of ``out`` comes from, for ops that move dimensions."""
    if op.name in ("cat", "concat", "concatenate"):
        return _cat_dims(trace, op, out, dim)
    inputs = [r for r in op.args if isinstance(r, TensorRef)]
    if not inputs:
        return []
    x = inputs[0]
    in_shape, out_shape = trace.shapes[x.vid], trace.shapes[out.vid]
    name = op.name
    if name in ("transpose", "swapaxes"):
        a = normalise_dim(int(_arg(op, 1, "dim0")), len(out_shape))
        b = normalise_dim(int(_arg(op, 2, "dim1")), len(out_shape))
        return [(x, b if dim == a else a if dim == b else dim)]
    if name == "permute":
        dims = _arg(op, 1, "dims")
        order = list(dims) if isinstance(dims, (tuple, list)) else [a for a in op.args[1:] if isinstance(a, int)]
        if len(order) != len(out_shape):
            return []
        return [(x, normalise_dim(int(order[dim]), len(in_shape)))]
    if name in ("unbind", "select"):
        axis = normalise_dim(int(_arg(op, 1, "dim", 0)), len(in_shape))
        return [(x, dim if dim < axis else dim + 1)]
    if name in ("chunk", "split", "split_with_sizes", "tensor_split", "narrow"):
        return [(x, dim)] if len(in_shape) == len(out_shape) else []
    if name == "pad":  # the padded dimensions are positions; the others pass
        widths = _arg(op, 1, "pad")
        padded = {len(in_shape) - 1 - k for k in range(len(widths) // 2) if widths[2 * k] or widths[2 * k + 1]}
        return [] if dim in padded else [(x, dim)]
    if name == "diagonal":  # the two diagonal dimensions become the last; the others keep their order
        pair = {normalise_dim(int(_arg(op, k, n, v)), len(in_shape)) for k, n, v in ((2, "dim1", 0), (3, "dim2", 1))}
        rest = [d for d in range(len(in_shape)) if d not in pair]
        return [(x, rest[dim])] if dim < len(rest) else []
    if name == "unfold":  # x.unfold(axis, size, step): windows along axis, a new last dimension
        axis = normalise_dim(int(_arg(op, 1, "dimension")), len(in_shape))
        return [(x, dim)] if dim != axis and dim < len(in_shape) else []
    if name == "getitem":
        return _getitem_dims(trace, op, x, dim)
    if name in _SAME_SHAPE or len(in_shape) == len(out_shape):
        # every operand shaped like the output (rotary: q * cos + rotate(q) * sin)
        return [(r, dim) for r in inputs if trace.shapes[r.vid] == out_shape and trace.param_name(r.vid) is None]
    return []


def _cat_dims(trace: Trace, op: OpRecord, out: TensorRef, dim: int) -> list[Step]:
    """Through a concatenation along another dimension (partial rotary ``cat((q_rot, q_pass), -1)``,
    a key/value cache ``cat((past, k), -2)``, global and windowed scores ``cat((g, w), -1)``): every
    operand of the output's rank carries ``dim`` unchanged; follow those computed in the model (not
    a model input or constant) that are not empty along the concatenated axis."""
    tensors = op.args[0] if op.args and isinstance(op.args[0], (tuple, list)) else []
    out_shape = trace.shapes[out.vid]
    axis = normalise_dim(int(_arg(op, 1, "dim", op.kwargs.get("axis", 0))), len(out_shape))
    if axis == dim:
        return []
    operands = [
        r
        for r in tensors
        if isinstance(r, TensorRef) and len(trace.shapes[r.vid]) == len(out_shape) and trace.shapes[r.vid][axis] > 0
    ]
    computed = [r for r in operands if trace.sources.get(r.vid, ("", ""))[0] == "op"]
    return [(r, dim) for r in (computed or operands[:1])]


def _getitem_dims(trace: Trace, op: OpRecord, x: TensorRef, dim: int) -> list[Step]:
    index = op.args[1] if len(op.args) > 1 else None
    items = list(index) if isinstance(index, tuple) else [index]
    plan = selection_plan(trace.shapes[x.vid], items, lambda r: trace.shapes[r.vid])
    if plan is None or dim >= len(plan[0]):
        return []
    source = plan[0][dim][0]
    return [] if source is None else [(x, source)]


def _arg(op: OpRecord, index: int, name: str, default: Any = None) -> Any:
    if len(op.args) > index:
        return op.args[index]
    return op.kwargs.get(name, default)


__all__ = ["head_split_dims"]
