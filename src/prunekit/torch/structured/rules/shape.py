"""How channel labels flow through data movement: reshapes, permutes, expands, indexing,
concatenation and splitting.

Each rule reads an :class:`OpRecord`, unifies the atoms its semantics tie together, and sets
the labels of its outputs. A rule that meets a case it cannot express exactly calls
``st.unsupported_op`` (all channels it touches are kept) rather than guessing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from prunekit.torch.structured.labels import (
    FIXED,
    Labels,
    LabelState,
    SplitRecord,
    arg,
    as_int_list,
    is_tensor,
    normalise_dim,
    zeros_like_shape,
)
from prunekit.torch.structured.rules.indexing import (
    as_strided,
    getitem,
    index_accumulate,
    index_along,
    narrow,
    select,
    setitem,
)
from prunekit.torch.structured.rules.pointwise import POINTWISE_RULES, Rule, broadcast_unify, first_tensor, outputs_of, pass_param
from prunekit.torch.structured.tracing import OpRecord, SizeOf, TensorRef


def _has_labels(lab: np.ndarray) -> bool:
    return bool((lab != FIXED).any())


# -- reshapes -----------------------------------------------------------------------------


def reshape_labels(
    st: LabelState, labels: Labels, in_shape: tuple[int, ...], out_shape: tuple[int, ...], prefer: int | None = None
) -> Labels:
    """Carry labels through a reshape, splitting/merging dimensions by matching sizes.

    A merged dimension repeats the channel of its labelled factor (``flatten`` of ``C×H×W``
    gives each channel ``H·W`` positions). A split that cannot keep positions apart (``H·D`` into
    heads ``(H, D)``) unifies each block into one channel along the preferred output dimension:
    the one the code wrote as ``-1``, else the largest.
    """
    for d, size in enumerate(in_shape):
        if size == 1:
            st.fix(labels[d])
    result = zeros_like_shape(out_shape)
    if 0 in in_shape:
        return result
    for seg_in, seg_out in reshape_segments(in_shape, out_shape):
        _reshape_segment(st, labels, in_shape, out_shape, seg_in, seg_out, result, prefer)
    return result


def reshape_segments(in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> Iterator[tuple[list[int], list[int]]]:
    """The blocks of input and output dimensions (of more than one position) that a reshape maps onto
    each other, in order: ``(2, 12) -> (2, 3, 4)`` gives ``([0], [0])`` then ``([1], [1, 2])``.
    Stops at a block whose sizes never match (not a reshape of these shapes)."""
    ins = [d for d, s in enumerate(in_shape) if s != 1]
    outs = [d for d, s in enumerate(out_shape) if s != 1]
    i = j = 0
    while i < len(ins) and j < len(outs):
        seg_in, seg_out = [ins[i]], [outs[j]]
        p_in, p_out = in_shape[ins[i]], out_shape[outs[j]]
        i, j = i + 1, j + 1
        while p_in != p_out:
            if p_in < p_out and i < len(ins):
                seg_in.append(ins[i])
                p_in *= in_shape[ins[i]]
                i += 1
            elif p_out < p_in and j < len(outs):
                seg_out.append(outs[j])
                p_out *= out_shape[outs[j]]
                j += 1
            else:
                return
        yield seg_in, seg_out


def _reshape_segment(
    st: LabelState,
    labels: Labels,
    in_shape: tuple[int, ...],
    out_shape: tuple[int, ...],
    seg_in: list[int],
    seg_out: list[int],
    result: Labels,
    prefer: int | None,
) -> None:
    labelled = [d for d in seg_in if _has_labels(labels[d])]
    if not labelled:
        return
    heads = [d for d in labelled if _is_heads(st, labels[d])]
    keep = heads[0] if heads else max(labelled, key=lambda d: len(np.unique(labels[d])))
    for d in labelled:
        if d != keep:
            st.fix(labels[d])
    sizes = [in_shape[d] for d in seg_in]
    view = [1] * len(seg_in)
    view[seg_in.index(keep)] = in_shape[keep]
    flat = np.broadcast_to(labels[keep].reshape(view), sizes).reshape(-1)
    if len(seg_out) == 1:
        result[seg_out[0]] = flat.copy()
        return
    grid = flat.reshape([out_shape[d] for d in seg_out])
    for t in range(len(seg_out)):
        rows = np.moveaxis(grid, t, 0).reshape(grid.shape[t], -1)
        if (rows == rows[:, :1]).all():
            result[seg_out[t]] = rows[:, 0].copy()
            return
    if prefer is not None and prefer in seg_out:
        t = seg_out.index(prefer)
    else:
        t = max(range(len(seg_out)), key=lambda k: (out_shape[seg_out[k]], -k))
    rows = np.moveaxis(grid, t, 0).reshape(grid.shape[t], -1)
    result[seg_out[t]] = st.coarsen(rows)


def _is_heads(st: LabelState, lab: np.ndarray) -> bool:
    """Whether these labels are the query heads of an attention seen so far: merging heads with a
    per-head width that is itself labelled (multi-query attention, whose one key/value head is never
    split into heads) keeps the heads and the head width whole, not the other way round."""
    return any(len(r.query_heads) == len(lab) and np.array_equal(r.query_heads, lab) for r in st.attention)


def _minus_one_dim(op: OpRecord, out_ndim: int) -> int | None:
    sizes = _size_args(op)
    if op.name == "unflatten":
        dim = normalise_dim(int(arg(op, 1, "dim")), out_ndim)
        inner = list(arg(op, 2, "sizes", ()))
        return dim + inner.index(-1) if -1 in inner else None
    if len(sizes) == out_ndim and sizes.count(-1) == 1:
        return sizes.index(-1)
    return None


def _size_args(op: OpRecord) -> list[Any]:
    sizes = [a for a in op.args[1:] if not is_tensor(a)]
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = list(sizes[0])
    return list(op.kwargs["shape"]) if "shape" in op.kwargs else sizes


def tie_read_sizes(st: LabelState, sizes: list[Any], labels: Labels) -> None:
    """Tie each dimension sized by a size read from another tensor (a :class:`SizeOf`) to that
    tensor's dimension: ``y.view(b, t, x.shape[-1])`` only runs while the two stay equal."""
    for lab, size in zip(labels, sizes):
        if isinstance(size, SizeOf) and size.vid in st.trace.shapes:
            source = st.get(TensorRef(size.vid))
            if 0 <= size.dim < len(source) and len(source[size.dim]) == len(lab):
                st.unify(lab, source[size.dim])


def reshape(st: LabelState, op: OpRecord) -> None:
    x, out = first_tensor(op), outputs_of(op)[0]
    out_shape = st.shape(out)
    prefer = st.head_dims.get(op.index)
    if prefer is not None:
        st.head_outputs[out.vid] = prefer
    elif op.name in ("view", "reshape", "unflatten"):
        prefer = _minus_one_dim(op, len(out_shape))
    labels = reshape_labels(st, st.get(x), st.shape(x), out_shape, prefer)
    if out.vid in st.head_outputs:
        _keep_single_head_width(st, op, labels, out_shape, st.head_outputs[out.vid])
    st.set(out, labels)
    if op.name in ("view", "reshape"):
        sizes = _size_args(op)
        if len(sizes) == len(out_shape):
            tie_read_sizes(st, sizes, st.get(out))
    pass_param(st, x, out)


def _keep_single_head_width(st: LabelState, op: OpRecord, labels: Labels, out_shape: tuple[int, ...], heads: int) -> None:
    """One attention head whose width is the only dimension after it: the width is sized by
    attributes shared by q, k and v (or split into unequal per-head sections, LeViT's ``[key_dim,
    key_dim, ratio * key_dim]``) that cannot shrink apart; as with several heads (the unit pruned),
    it is kept whole."""
    widths = [d for d in range(heads + 1, len(out_shape)) if out_shape[d] > 1]
    if out_shape[heads] == 1 and len(widths) == 1:
        reason = f"tied at node {op.label} as the width of a single attention head, kept whole (heads are the unit pruned)"
        st.fix(labels[widths[0]], reason)


def permute(st: LabelState, op: OpRecord) -> None:
    x, out = first_tensor(op), outputs_of(op)[0]
    labels = st.get(x)
    ndim = len(labels)
    order = list(range(ndim))
    name = op.name
    if name == "permute":
        dims = op.args[1:] if len(op.args) > 1 else (op.kwargs.get("dims"),)
        if len(dims) == 1 and isinstance(dims[0], (tuple, list, type(None))):
            dims = dims[0] or ()
        order = [normalise_dim(int(d), ndim) for d in dims]
    elif name == "transpose":
        a = normalise_dim(int(arg(op, 1, "dim0")), ndim)
        b = normalise_dim(int(arg(op, 2, "dim1")), ndim)
        order[a], order[b] = order[b], order[a]
    elif name in ("t", "mT", "mH") and ndim >= 2:
        order[-1], order[-2] = order[-2], order[-1]
    elif name in ("T", "H"):
        order = order[::-1]
    elif name == "movedim":
        src = [normalise_dim(d, ndim) for d in as_int_list(arg(op, 1, "source"))]
        dst = [normalise_dim(d, ndim) for d in as_int_list(arg(op, 2, "destination"))]
        rest = [d for d in range(ndim) if d not in src]
        order = [0] * ndim
        placed = dict(zip(dst, src))
        it = iter(rest)
        order = [placed[k] if k in placed else next(it) for k in range(ndim)]
    st.set(out, [labels[d] for d in order])
    pass_param(st, x, out)


def expand(st: LabelState, op: OpRecord) -> None:
    x, out = first_tensor(op), outputs_of(op)[0]
    labels, shape, out_shape = st.get(x), st.shape(x), st.shape(out)
    offset = len(out_shape) - len(shape)
    result = zeros_like_shape(out_shape)
    for d, size in enumerate(shape):
        if size == out_shape[d + offset]:
            result[d + offset] = labels[d]
        elif size == 1:  # copies of one slice hold no channel: they may shrink with what they meet
            result[d + offset] = st.fresh(out_shape[d + offset])
    st.set(out, result)


def repeat(st: LabelState, op: OpRecord) -> None:
    x, out = first_tensor(op), outputs_of(op)[0]
    labels, shape, out_shape = st.get(x), st.shape(x), st.shape(out)
    offset = len(out_shape) - len(shape)
    result = zeros_like_shape(out_shape)
    for d, size in enumerate(shape):
        times = out_shape[d + offset] // max(size, 1)
        result[d + offset] = np.tile(labels[d], times)
    st.set(out, result)


def repeat_interleave(st: LabelState, op: OpRecord) -> None:
    x, out = first_tensor(op), outputs_of(op)[0]
    repeats, dim = arg(op, 1, "repeats"), arg(op, 2, "dim")
    if is_tensor(repeats) or dim is None:
        st.unsupported_op(op, "repeat_interleave with tensor repeats or without dim")
        return
    labels = list(st.get(x))
    dim = normalise_dim(int(dim), len(labels))
    labels[dim] = np.repeat(labels[dim], int(repeats))
    st.set(out, labels)


def flip(st: LabelState, op: OpRecord) -> None:
    x, out = first_tensor(op), outputs_of(op)[0]
    labels = list(st.get(x))
    dims = {"fliplr": [1], "flipud": [0]}.get(op.name) or as_int_list(arg(op, 1, "dims"))
    for d in dims:
        d = normalise_dim(d, len(labels))
        labels[d] = labels[d][::-1].copy()
    st.set(out, labels)


def triangle(st: LabelState, op: OpRecord) -> None:
    """``tril``/``triu``: a mask by row and column index over the last two dimensions. Channels
    there are kept (removing one would move the diagonal for the rest); others pass through."""
    x, out = first_tensor(op), outputs_of(op)[0]
    labels = st.get(x)
    for d in range(max(0, len(labels) - 2), len(labels)):
        st.fix(labels[d])
    st.set(out, labels)


def unfold(st: LabelState, op: OpRecord) -> None:
    """``x.unfold(dim, size, step)``: overlapping windows along ``dim`` (positions, kept) and a new
    last dimension inside each window; every other dimension keeps its channels (the heads of a
    sliding-window attention)."""
    x, out = first_tensor(op), outputs_of(op)[0]
    labels = list(st.get(x))
    dim = normalise_dim(int(arg(op, 1, "dimension")), len(labels))
    st.fix(labels[dim])
    out_shape = st.shape(out)
    labels[dim] = np.zeros(out_shape[dim], np.int64)
    st.set(out, labels + [np.zeros(out_shape[-1], np.int64)])


def diagonal(st: LabelState, op: OpRecord) -> None:
    """``x.diagonal(offset, dim1, dim2)``: the two dimensions (positions, kept) become one last
    dimension; the others keep their channels."""
    x, out = first_tensor(op), outputs_of(op)[0]
    labels = st.get(x)
    pair = {normalise_dim(int(arg(op, k, name, default)), len(labels)) for k, name, default in ((2, "dim1", 0), (3, "dim2", 1))}
    for d in pair:
        st.fix(labels[d])
    out_shape = st.shape(out)
    st.set(out, [lab for d, lab in enumerate(labels) if d not in pair] + [np.zeros(out_shape[-1], np.int64)])


def roll(st: LabelState, op: OpRecord) -> None:
    x, out = first_tensor(op), outputs_of(op)[0]
    labels = st.get(x)
    dims = arg(op, 2, "dims")
    for d in range(len(labels)) if dims is None else as_int_list(dims):
        st.fix(labels[normalise_dim(d, len(labels))])
    st.set(out, labels)


# -- concatenation and splitting ----------------------------------------------------------


def cat(st: LabelState, op: OpRecord) -> None:
    tensors = [t for t in (arg(op, 0, "tensors") or ()) if is_tensor(t)]
    out = outputs_of(op)[0]
    out_shape = st.shape(out)
    dim = normalise_dim(int(arg(op, 1, "dim", op.kwargs.get("axis", 0))), len(out_shape))
    tensors = [t for t in tensors if st.shape(t) != (0,)]
    pieces: list[np.ndarray] = []
    result: Labels = [None] * len(out_shape)
    for t in tensors:
        labels = st.get(t)
        pieces.append(labels[dim])
        for d, lab in enumerate(labels):
            if d == dim:
                continue
            if result[d] is None:
                result[d] = lab
            else:
                st.unify(result[d], lab)
    result[dim] = np.concatenate(pieces) if pieces else np.zeros(0, np.int64)
    st.set(out, [lab if lab is not None else np.zeros(out_shape[d], np.int64) for d, lab in enumerate(result)])


def stack(st: LabelState, op: OpRecord) -> None:
    tensors = [t for t in (arg(op, 0, "tensors") or ()) if is_tensor(t)]
    out = outputs_of(op)[0]
    dim = normalise_dim(int(arg(op, 1, "dim", op.kwargs.get("axis", 0))), len(st.shape(out)))
    base = broadcast_unify(st, tensors, st.shape(tensors[0]))
    st.set(out, base[:dim] + [np.zeros(len(tensors), np.int64)] + base[dim:])


def split(st: LabelState, op: OpRecord) -> None:
    """``split``/``chunk``/``tensor_split``: equal sections lose the same channels, so they are
    unified across sections; sections of listed sizes (``split([q, k, v])``, a grouped-query
    projection) shrink on their own (a literal list is caught by verification); other unequal
    sections keep the split dimension whole."""
    x = first_tensor(op)
    labels, shape = st.get(x), st.shape(x)
    outs = outputs_of(op)
    dim_index = 1 if op.name == "unbind" else 2
    dim = normalise_dim(int(arg(op, dim_index, "dim", 0)), len(shape))
    if op.name == "unbind":
        st.fix(labels[dim])
        for out in outs:
            st.set(out, labels[:dim] + labels[dim + 1 :])
        return
    sizes = [st.shape(o)[dim] for o in outs]
    equal = len(set(sizes)) == 1 and sizes[0] * len(sizes) == shape[dim]
    if equal and len(outs) > 1:
        sections = labels[dim].reshape(len(outs), sizes[0])
        st.unify(sections[1:], np.repeat(sections[:1], len(outs) - 1, axis=0))
        if op.name in ("split", "split_with_sizes") and _has_labels(labels[dim]):
            st.splits.append(SplitRecord(op.index, op.module, sections[0].copy(), sizes[0]))
    elif len(outs) > 1 and not (op.name in ("split", "split_with_sizes") and isinstance(arg(op, 1, "split_size"), (list, tuple))):
        st.fix(labels[dim])
    sections = arg(op, 1, "split_size", op.kwargs.get("split_size_or_sections")) if op.name != "tensor_split" else None
    sections = list(sections) if isinstance(sections, (list, tuple)) and len(sections) == len(outs) else [None] * len(outs)
    offset = 0
    for out, size, section in zip(outs, sizes, sections):
        piece = list(labels)
        piece[dim] = labels[dim][offset : offset + size]
        offset += size
        st.set(out, piece)
        tie_read_sizes(st, [section], [piece[dim]])


def creation_sizes(op: OpRecord) -> list[Any]:
    """The size arguments of a tensor-creating call: ``zeros(1, h, q, k)``, ``zeros((1, h, q, k))``,
    ``full((n, d), value)``, ``x.new_zeros(n, d)`` (after the tensor)."""
    args = list(op.args[1:] if op.name.startswith("new_") else op.args)
    if args and isinstance(args[0], (tuple, list)):
        return list(args[0])
    if "size" in op.kwargs and isinstance(op.kwargs["size"], (tuple, list)):
        return list(op.kwargs["size"])
    return [a for a in args if isinstance(a, int) and not isinstance(a, bool)]


def created(st: LabelState, op: OpRecord) -> None:
    """A tensor the code creates (``torch.zeros((1, n_heads, q, k))`` for a position bias, a buffer
    to accumulate into): its positions hold no channel of their own, so each dimension wider than one
    may shrink with whatever it meets (its size, read from an attribute, is updated after pruning);
    a dimension sized by reading another tensor (``x.shape[1]``) is tied to that tensor's."""
    for out in outputs_of(op):
        shape = st.shape(out)
        labels = [st.fresh(size) if size > 1 else np.zeros(size, np.int64) for size in shape]
        st.set(out, labels)
        sizes = creation_sizes(op)
        if len(sizes) == len(shape):
            tie_read_sizes(st, sizes, labels)


SHAPE_RULES: dict[str, Rule] = dict(POINTWISE_RULES)


def _register(rule: Rule, *names: str) -> None:
    for name in names:
        SHAPE_RULES[name] = rule


_register(reshape, "view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as", "ravel")

_register(permute, "permute", "transpose", "t", "T", "mT", "H", "mH", "movedim")

_register(expand, "expand", "expand_as", "broadcast_to")

_register(repeat, "repeat", "tile")

_register(repeat_interleave, "repeat_interleave")

_register(flip, "flip", "fliplr", "flipud")

_register(as_strided, "as_strided")

_register(roll, "roll")

_register(triangle, "tril", "triu")

_register(getitem, "getitem")

_register(setitem, "setitem", "index_put", "slice_scatter", "select_scatter")

_register(unfold, "unfold")

_register(diagonal, "diagonal")

_register(narrow, "narrow")

_register(select, "select")

_register(index_along, "index_select", "gather", "take_along_dim")

_register(index_accumulate, "index_add", "index_copy")

_register(cat, "cat")

_register(stack, "stack")

_register(split, "split", "split_with_sizes", "chunk", "tensor_split", "unbind")

_register(created, "zeros", "ones", "empty", "full", "new_zeros", "new_ones", "new_empty", "new_full")


def all_outputs_zero(st: LabelState, op: OpRecord) -> None:
    """Give every output the rule did not label fixed labels."""
    for out in outputs_of(op):
        if out.vid not in st.labels:
            st.set(out, zeros_like_shape(st.shape(out)))
