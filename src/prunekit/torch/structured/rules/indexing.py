"""How channel labels flow through indexing: slicing, gathering, partial writes, and memory
addressed by strides (``as_strided``).

Each rule reads an :class:`OpRecord`, unifies the atoms its semantics tie together, and sets the
labels of its outputs; positions indexed partially (some tokens, a band of scores) are kept.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from prunekit.torch.structured.labels import (
    FIXED,
    Labels,
    LabelState,
    arg,
    is_tensor,
    normalise_dim,
    tensor_refs,
    zeros_like_shape,
)
from prunekit.torch.structured.rules.pointwise import broadcast_unify, first_tensor, outputs_of, pass_param
from prunekit.torch.structured.tracing import OpRecord, TensorRef


def as_strided(st: LabelState, op: OpRecord) -> None:
    """``x.as_strided(size, stride)`` (longformer's overlapping chunks): an output dimension keeps
    the channels of the input dimension with its size and stride when its index can be read back
    from the memory offset alone, in both tensors (the dimensions inside it span less than its
    stride, those outside it step by multiples of its extent); every other dimension (overlapping
    windows) holds positions, not channels."""
    x, out = first_tensor(op), outputs_of(op)[0]
    labels, in_shape, out_shape = st.get(x), st.shape(x), st.shape(out)
    stride, offset = arg(op, 2, "stride"), arg(op, 3, "storage_offset", 0)
    in_strides = st.trace.strides.get(x.vid)
    if in_strides is None or not isinstance(stride, (tuple, list)) or len(stride) != len(out_shape) or offset:
        st.unsupported_op(op, "as_strided without known strides or with a storage offset")
        return
    result = zeros_like_shape(out_shape)
    sources = strided_sources(in_shape, in_strides, out_shape, [int(s) for s in stride])
    for j, i in sources.items():
        result[j] = labels[i]
    for i, lab in enumerate(labels):
        if i not in sources.values():
            st.fix(lab)
    st.set(out, result)


def strided_sources(
    in_shape: tuple[int, ...], in_strides: tuple[int, ...], out_shape: tuple[int, ...], out_strides: list[int]
) -> dict[int, int]:
    """``{output dimension: input dimension}`` of a strided view of a tensor, for the output
    dimensions that address exactly one input dimension (same size and stride, each index readable
    back from the memory offset in both tensors)."""
    sources: dict[int, int] = {}
    for j, size in enumerate(out_shape):
        used = sources.values()
        matches = [i for i, n in enumerate(in_shape) if n == size > 1 and in_strides[i] == out_strides[j] and i not in used]
        if matches and _separable(out_shape, out_strides, j) and _separable(in_shape, in_strides, matches[0]):
            sources[j] = matches[0]
    return sources


def _separable(shape: tuple[int, ...] | list[int], strides: tuple[int, ...] | list[int], j: int) -> bool:
    """Whether dimension ``j``'s index is recoverable from a memory offset: the other dimensions
    either step by multiples of its extent or together span less than its stride."""
    extent = strides[j] * shape[j]
    inner = sum(strides[k] * (shape[k] - 1) for k in range(len(shape)) if k != j and shape[k] > 1 and strides[k] < strides[j])
    outer_ok = all(strides[k] % extent == 0 for k in range(len(shape)) if k != j and shape[k] > 1 and strides[k] >= strides[j])
    return inner < strides[j] and outer_ok


# -- indexing -----------------------------------------------------------------------------


def _is_full(index: slice, size: int) -> bool:
    start, stop, step = index.indices(size)
    return start == 0 and stop == size and step == 1


def getitem(st: LabelState, op: OpRecord) -> None:
    x, out = first_tensor(op), outputs_of(op)[0]
    labels, shape = st.get(x), st.shape(x)
    index = op.args[1] if len(op.args) > 1 else ()
    items = list(index) if isinstance(index, tuple) else [index]
    if _gather_one_dim(st, op, labels, shape, items):
        return
    selected = _selection(st, labels, shape, items) if any(is_tensor(i) for i in items) else None
    if selected is not None and [len(lab) for lab in selected[0]] == list(st.shape(out)):
        for d in selected[1]:  # rows picked by index tensors (the tokens of global attention)
            st.fix(labels[d])
        for ref in tensor_refs(index):
            st.fix_value(ref)
        st.set(out, selected[0])
        return
    if any(is_tensor(i) or isinstance(i, (list, bool)) for i in items):
        for lab in labels:
            st.fix(lab)
        st.set(out, zeros_like_shape(st.shape(out)))
        return
    explicit = sum(1 for i in items if i is not None and i is not Ellipsis)
    if Ellipsis in items:
        at = items.index(Ellipsis)
        items = items[:at] + [slice(None)] * (len(shape) - explicit) + items[at + 1 :]
    else:
        items += [slice(None)] * (len(shape) - explicit)
    result: Labels = []
    d = 0
    for item in items:
        if item is None:
            result.append(np.zeros(1, np.int64))
        elif isinstance(item, int):
            st.fix(labels[d])
            d += 1
        elif isinstance(item, slice):
            if d >= len(shape):
                break
            if not _is_full(item, shape[d]):
                st.fix(labels[d])
            result.append(labels[d][item])
            d += 1
    if [len(lab) for lab in result] != list(st.shape(out)):
        st.unsupported_op(op, "could not follow this indexing")
        return
    st.set(out, result)
    if all(isinstance(i, slice) and _is_full(i, shape[k]) for k, i in enumerate(items[: len(shape)])):
        pass_param(st, x, out)


def _gather_one_dim(st: LabelState, op: OpRecord, labels: Labels, shape: tuple[int, ...], items: list) -> bool:
    """``x[idx]``/``x[:, idx]`` with one integer tensor index and full slices elsewhere (a relative
    position bias table read per token pair): the indexed dimension is replaced by the index's
    dimensions (not channels); every other dimension keeps its channels."""
    tensors = [k for k, item in enumerate(items) if is_tensor(item)]
    if len(tensors) != 1 or len(items) > len(shape):
        return False
    at = tensors[0]
    rest = [item for k, item in enumerate(items) if k != at]
    if not all(isinstance(item, slice) and _is_full(item, shape[k if k < at else k + 1]) for k, item in enumerate(rest)):
        return False
    index_ref = items[at]
    index_shape = st.shape(index_ref)
    out = outputs_of(op)[0]
    result = list(labels[:at]) + zeros_like_shape(index_shape) + list(labels[at + 1 :])
    if [len(lab) for lab in result] != list(st.shape(out)):
        return False
    st.fix(labels[at])
    st.fix_value(index_ref)
    st.set(out, result)
    return True


def write_items(op: OpRecord, ndim: int) -> tuple[list, Any] | None:
    """Where a write into a tensor ``x`` of ``ndim`` dimensions lands and what it writes, as
    ``(index items, value)``: ``x[index] = value``, ``x.index_put_((rows, cols), value)`` (a ``None``
    index is a whole slice), ``torch.slice_scatter(x, value, dim, start, end, step)``,
    ``torch.select_scatter(x, value, dim, i)``; ``None`` for another form."""
    if op.name == "setitem":
        index = op.args[1] if len(op.args) > 1 else None
        return (list(index) if isinstance(index, tuple) else [index]), (op.args[2] if len(op.args) > 2 else None)
    if op.name == "index_put":
        indices = arg(op, 1, "indices")
        if not isinstance(indices, (tuple, list)):
            return None
        return [slice(None) if i is None else i for i in indices], arg(op, 2, "values")
    value, dim = arg(op, 1, "src"), arg(op, 2, "dim", 0)
    if not isinstance(dim, int) or isinstance(dim, bool):
        return None
    lead: list[Any] = [slice(None)] * normalise_dim(dim, ndim)
    if op.name == "slice_scatter":
        start, end, step = arg(op, 3, "start"), arg(op, 4, "end"), arg(op, 5, "step", 1)
        if any(is_tensor(v) for v in (start, end, step)):
            return None
        return lead + [slice(start, end, step)], value
    if op.name == "select_scatter":
        index = arg(op, 3, "index")
        return (lead + [int(index)], value) if isinstance(index, int) else None
    return None


def setitem(st: LabelState, op: OpRecord) -> None:
    """``x[index] = value`` and the other writes of :func:`write_items`: the written part of ``x``
    takes the value's channels (a buffer created empty carries the channels written into it);
    positions indexed partially are kept."""
    x, out = op.args[0], outputs_of(op)[0]
    labels, shape = st.get(x), st.shape(x)
    written = write_items(op, len(shape))
    if written is None:
        st.unsupported_op(op, "a write whose index is not a slice, an integer or integer tensors")
        return
    items, value = written
    full = all(isinstance(i, slice) and k < len(shape) and _is_full(i, shape[k]) for k, i in enumerate(items)) or items == [
        Ellipsis
    ]
    selected = None if full else _selection(st, labels, shape, items)
    if full and is_tensor(value):
        broadcast_unify(st, [x, value], shape)
    elif selected is not None:
        # a part of x is written (a band of scores, the rows of some tokens): the positions indexed
        # partially are kept, every dimension taken whole keeps its channels, shared with the value's
        chosen, partial = selected
        for d in partial:
            st.fix(labels[d])
        if is_tensor(value):
            _unify_trailing(st, st.get(value), chosen)
    else:
        for lab in labels:
            st.fix(lab)
        if is_tensor(value):
            st.fix_value(value)
    st.set(out, labels)


def _selection(st: LabelState, labels: Labels, shape: tuple[int, ...], items: list) -> tuple[Labels, list[int]] | None:
    """Labels of ``x[items]`` and the dimensions of ``x`` it indexes partially (see :func:`selection_plan`)."""
    found = selection_plan(shape, items, st.shape)
    if found is None:
        return None
    plan, partial = found
    chosen = [labels[d][item] if d is not None else np.zeros(item, np.int64) for d, item in plan]
    return chosen, partial


def selection_plan(
    shape: tuple[int, ...], items: list, shape_of: Callable[[TensorRef], tuple[int, ...]]
) -> tuple[list[tuple[int | None, Any]], list[int]] | None:
    """Where each dimension of ``x[items]`` comes from, for basic indexing (slices, integers,
    ``None``, ``...``) or integer tensors on the leading dimensions (``x[rows, cols]``, all of one
    shape) followed by whole slices: ``(d, item)`` is dimension ``d`` of ``x`` sliced by ``item``,
    ``(None, n)`` a dimension of ``n`` positions that holds no channel (an index's, a new axis);
    with the dimensions of ``x`` indexed partially. ``None`` for any other index."""
    tensors = [k for k, item in enumerate(items) if is_tensor(item)]
    if tensors:
        index_shapes = {shape_of(items[k]) for k in tensors}
        if len(index_shapes) != 1 or len(items) > len(shape) or Ellipsis in items:
            return None
        items = items + [slice(None)] * (len(shape) - len(items))
        if not all(is_tensor(i) or (isinstance(i, slice) and _is_full(i, shape[k])) for k, i in enumerate(items)):
            return None
        index: list[tuple[int | None, Any]] = [(None, n) for n in index_shapes.pop()]
        kept: list[tuple[int | None, Any]] = [(k, slice(None)) for k in range(len(shape)) if k not in tensors]
        if tensors == list(range(tensors[0], tensors[-1] + 1)):  # adjacent: the index takes their place
            return kept[: tensors[0]] + index + kept[tensors[0] :], tensors
        return index + kept, tensors  # apart: numpy puts the index dimensions first
    if any(isinstance(i, (list, bool)) for i in items) or items.count(Ellipsis) > 1:
        return None
    explicit = sum(1 for i in items if i is not None and i is not Ellipsis)
    if explicit > len(shape):
        return None
    at = items.index(Ellipsis) if Ellipsis in items else len(items)
    items = items[:at] + [slice(None)] * (len(shape) - explicit) + items[at + 1 :]
    plan: list[tuple[int | None, Any]] = []
    partial: list[int] = []
    d = 0
    for item in items:
        if item is None:
            plan.append((None, 1))
            continue
        if not isinstance(item, (int, slice)):
            return None
        if isinstance(item, int) or not _is_full(item, shape[d]):
            partial.append(d)
        if isinstance(item, slice):
            plan.append((d, item))
        d += 1
    return plan, partial


def _unify_trailing(st: LabelState, value: Labels, chosen: Labels) -> None:
    """Tie a written value to the part of the tensor it lands in, aligned from the last dimension
    (a value dimension of one broadcasts and ties nothing)."""
    if len(value) > len(chosen):
        for lab in value:
            st.fix(lab)
        return
    for lab, target in zip(value[::-1], chosen[::-1]):
        if len(lab) == len(target):
            st.unify(lab, target)
        elif len(lab) != 1:
            st.fix(lab)


def narrow(st: LabelState, op: OpRecord) -> None:
    x, out = first_tensor(op), outputs_of(op)[0]
    labels, shape = list(st.get(x)), st.shape(x)
    dim = normalise_dim(int(arg(op, 1, "dim")), len(shape))
    start, length = arg(op, 2, "start"), arg(op, 3, "length")
    if is_tensor(start) or is_tensor(length):  # which positions it keeps is data: the dimension keeps its channels
        st.fix(labels[dim], f"{st.reason} (narrow by a start or length computed from data)")
        labels[dim] = np.zeros(st.shape(out)[dim], np.int64)
        st.set(out, labels)
        return
    start = normalise_dim(int(start), shape[dim])
    if not (start == 0 and length == shape[dim]):
        st.fix(labels[dim])
    labels[dim] = labels[dim][start : start + int(length)]
    st.set(out, labels)


def select(st: LabelState, op: OpRecord) -> None:
    x, out = first_tensor(op), outputs_of(op)[0]
    labels = list(st.get(x))
    dim = normalise_dim(int(arg(op, 1, "dim")), len(labels))
    st.fix(labels[dim])
    del labels[dim]
    st.set(out, labels)


def index_accumulate(st: LabelState, op: OpRecord) -> None:
    """``x.index_add(dim, index, source)``/``index_copy``: rows of ``source`` land in rows of ``x``
    (a mixture-of-experts combining its experts' outputs). The indexed dimension keeps its
    channels; every other dimension of ``source`` is the same channel as ``x``'s (or, where ``x``
    is a new buffer carrying no channels, gives the output its channels)."""
    x = first_tensor(op)
    labels = st.get(x)
    dim = arg(op, 1, "dim")
    source = arg(op, 3, "source")
    if dim is None or not is_tensor(source) or len(st.shape(source)) != len(labels):
        st.unsupported_op(op, "index_add/index_copy without a dimension and a source of the same rank")
        return
    dim = normalise_dim(int(dim), len(labels))
    st.fix(labels[dim])
    for ref in tensor_refs(arg(op, 2, "index")):
        st.fix_value(ref)
    result = list(labels)
    for d, lab in enumerate(st.get(source)):
        if d == dim or len(lab) != len(labels[d]):
            st.fix(lab)
            st.fix(labels[d])
        elif not (labels[d] != FIXED).any():
            result[d] = lab  # ``x`` is a fresh buffer (``zeros_like(h)``): it carries source's channels
        else:
            st.unify(lab, labels[d])
    for out in outputs_of(op):
        st.set(out, result if st.shape(out) == st.shape(x) else zeros_like_shape(st.shape(out)))


def index_along(st: LabelState, op: OpRecord) -> None:
    """``index_select``/``gather``: the indexed dimension keeps its channels; others pass."""
    x = first_tensor(op)
    labels = st.get(x)
    dim = arg(op, 1, "dim")
    if op.name == "take_along_dim":
        dim = arg(op, 2, "dim")
    if dim is None:
        st.unsupported_op(op, "indexing without a dimension")
        return
    dim = normalise_dim(int(dim), len(labels))
    st.fix(labels[dim])
    for ref in tensor_refs((op.args[1:], op.kwargs)):
        st.fix_value(ref)
    for out in outputs_of(op):
        out_shape = st.shape(out)
        result = zeros_like_shape(out_shape)
        for d, lab in enumerate(labels):
            if d != dim and d < len(out_shape) and len(lab) == out_shape[d]:
                result[d] = lab
            elif d != dim:
                st.fix(lab)
        st.set(out, result)
