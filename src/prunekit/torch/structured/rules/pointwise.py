"""How channel labels flow through pointwise ops, reductions and spatial ops.

Pointwise ops unify the atoms at the same position of their (broadcast) operands; reductions
remove a dimension and mark it inexact (a mean) or kept (an argmax); spatial ops (pooling,
interpolation, padding, pixel shuffles) pass batch and channels and fix space. A rule that meets
a case it cannot express exactly calls ``st.unsupported_op`` (all channels it touches are kept).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from prunekit.torch.structured.labels import (
    Labels,
    LabelState,
    arg,
    as_int_list,
    is_tensor,
    normalise_dim,
    tensor_refs,
    zeros_like_shape,
)
from prunekit.torch.structured.tracing import OpRecord, TensorRef

Rule = Callable[[LabelState, OpRecord], None]


def first_tensor(op: OpRecord) -> TensorRef:
    return tensor_refs((op.args, op.kwargs))[0]


def outputs_of(op: OpRecord) -> list[TensorRef]:
    return tensor_refs(op.outputs)


def pass_param(st: LabelState, src: TensorRef, dst: TensorRef) -> None:
    name = st.param_derived.get(src.vid)
    if name is not None:
        st.param_derived[dst.vid] = name


# -- elementwise --------------------------------------------------------------------------


def broadcast_unify(st: LabelState, refs: list[TensorRef], out_shape: tuple[int, ...]) -> Labels:
    """Unify same-position atoms of broadcast operands; returns the output's labels.

    A size-1 dimension broadcast against a longer one keeps its channel: removing it would leave
    a size-0 dimension that no longer broadcasts (a one-channel query scored against every key)."""
    ndim = len(out_shape)
    result: list[np.ndarray | None] = [None] * ndim
    for ref in refs:
        labels, shape = st.get(ref), st.shape(ref)
        offset = ndim - len(shape)
        if offset < 0:
            st.fix_value(ref)
            continue
        for d, size in enumerate(shape):
            od = d + offset
            if size == out_shape[od]:
                if result[od] is None:
                    result[od] = labels[d]
                else:
                    st.unify(result[od], labels[d])
            elif size != 1:
                st.fix(labels[d])
            else:  # its one channel is stretched over the others: without it nothing is left to stretch
                st.fix(labels[d], f"size-1 dimension broadcast to {out_shape[od]} at {st.reason}")
    return [lab if lab is not None else np.zeros(out_shape[i], np.int64) for i, lab in enumerate(result)]


def elementwise(st: LabelState, op: OpRecord) -> None:
    outs = outputs_of(op)
    if not outs:
        return
    shape = st.shape(outs[0])
    labels = broadcast_unify(st, tensor_refs((op.args, op.kwargs)), shape)
    for out in outs:
        st.set(out, labels if st.shape(out) == shape else zeros_like_shape(st.shape(out)))


def pass_through(st: LabelState, op: OpRecord) -> None:
    """Same positions in, same positions out; other tensor arguments (``to(other)``) are ignored."""
    src = first_tensor(op)
    for out in outputs_of(op):
        if st.shape(out) == st.shape(src):
            st.set(out, st.get(src))
            pass_param(st, src, out)
        else:
            st.unsupported_op(op, "output shape differs from input shape")
            return


def creation(st: LabelState, op: OpRecord) -> None:
    """``x.new_zeros(...)`` and friends: a new tensor whose positions carry no channels."""
    for out in outputs_of(op):
        st.set(out, zeros_like_shape(st.shape(out)))


def min_max(st: LabelState, op: OpRecord) -> None:
    """``torch.max(a, b)`` is elementwise; ``torch.max(x, dim)`` is a reduction."""
    if is_tensor(arg(op, 1, "other")):
        elementwise(st, op)
    else:
        reduction(st, op)


def where(st: LabelState, op: OpRecord) -> None:
    if len(tensor_refs((op.args, op.kwargs))) == 1 and len(op.args) == 1:
        st.unsupported_op(op, "torch.where(condition) returns indices")
        return
    elementwise(st, op)


# -- reductions ---------------------------------------------------------------------------

_EXACT_REDUCTIONS = {"sum", "nansum", "norm", "vector_norm", "linalg_vector_norm", "count_nonzero", "any"}
_INDEX_REDUCTIONS = {
    "argmax",
    "argmin",
    "median",
    "nanmedian",
    "mode",
    "kthvalue",
    "max",
    "min",
    "cummax",
    "cummin",
    "topk",
    "sort",
    "argsort",
}
_DIM_ARG_INDEX = {"norm": 2, "vector_norm": 2, "linalg_vector_norm": 2, "kthvalue": 2, "topk": 2}
#: ``dim`` when the call leaves it out, for ops along one dimension whose default is the last
_DEFAULT_LAST_DIM = {"topk", "sort", "argsort"}


def reduction(st: LabelState, op: OpRecord) -> None:
    x = first_tensor(op)
    labels, shape = st.get(x), st.shape(x)
    ndim = len(shape)
    dim = arg(op, _DIM_ARG_INDEX.get(op.name, 1), "dim", None)
    if dim is None:  # torch also takes NumPy's ``axis=`` (``torch.mean(x, axis=-1, keepdim=True)``)
        dim = op.kwargs.get("axis")
    if isinstance(dim, bool) or is_tensor(dim):
        dim = None
    outs = outputs_of(op)
    if not outs:
        return
    out_shape = st.shape(outs[0])
    reduced = set(range(ndim)) if dim is None or dim == () or dim == [] else {normalise_dim(d, ndim) for d in as_int_list(dim)}
    keepdim = len(out_shape) == ndim and ndim > 0
    result: Labels = []
    for d in range(ndim):
        if d in reduced:
            if keepdim:
                result.append(np.zeros(1, np.int64))
        else:
            result.append(labels[d])
    if [len(lab) for lab in result] != list(out_shape):
        st.unsupported_op(op, f"could not match reduction output {out_shape} to input {shape}")
        return
    for d in reduced:
        if op.name in _INDEX_REDUCTIONS:
            st.fix(labels[d])
        elif op.name not in _EXACT_REDUCTIONS:
            st.mark_inexact(labels[d])
    for out in outs:
        st.set(out, result if st.shape(out) == out_shape else zeros_like_shape(st.shape(out)))


def along_dim(kind: str) -> Rule:
    """Ops acting along one dimension: ``softmax`` (inexact there) or ``cumsum`` (kept there)."""

    def rule(st: LabelState, op: OpRecord) -> None:
        x = first_tensor(op)
        labels = st.get(x)
        dim = arg(op, _DIM_ARG_INDEX.get(op.name, 1), "dim", -1 if op.name in _DEFAULT_LAST_DIM else None)
        dims = range(len(labels)) if dim is None or is_tensor(dim) else [normalise_dim(int(dim), len(labels))]
        for d in dims:
            if kind == "inexact":
                st.mark_inexact(labels[d])
            else:
                st.fix(labels[d])
        for out in outputs_of(op):
            st.set(out, labels if st.shape(out) == st.shape(x) else zeros_like_shape(st.shape(out)))

    return rule


def glu(st: LabelState, op: OpRecord) -> None:
    x = first_tensor(op)
    labels, shape = st.get(x), st.shape(x)
    dim = normalise_dim(int(arg(op, 1, "dim", -1)), len(shape))
    half = shape[dim] // 2
    st.unify(labels[dim][:half], labels[dim][half:])
    result = list(labels)
    result[dim] = labels[dim][:half]
    st.set(outputs_of(op)[0], result)


# -- spatial ops --------------------------------------------------------------------------


def spatial(st: LabelState, op: OpRecord) -> None:
    """Pooling, interpolation, padding-free resampling: batch and channel pass, space is fixed."""
    x = first_tensor(op)
    labels, shape = st.get(x), st.shape(x)
    rank = next((int(c) for c in "123" if f"{c}d" in op.name), max(len(shape) - 2, 1))
    lead = len(shape) - rank
    for lab in labels[lead:]:
        st.fix(lab)
    for out in outputs_of(op):
        out_shape = st.shape(out)
        if len(out_shape) != len(shape) or out_shape[:lead] != shape[:lead]:
            st.unsupported_op(op, f"unexpected output shape {out_shape}")
            return
        st.set(out, list(labels[:lead]) + zeros_like_shape(out_shape[lead:]))


def pad(st: LabelState, op: OpRecord) -> None:
    x, out = first_tensor(op), outputs_of(op)[0]
    labels, out_shape = list(st.get(x)), st.shape(out)
    widths = as_int_list(arg(op, 1, "pad"))
    for k in range(len(widths) // 2):
        d = len(labels) - 1 - k
        if widths[2 * k] or widths[2 * k + 1]:
            st.fix(labels[d])
            labels[d] = np.zeros(out_shape[d], np.int64)
    st.set(out, labels)


def pixel_shuffle(st: LabelState, op: OpRecord) -> None:
    x, out = first_tensor(op), outputs_of(op)[0]
    labels, shape, out_shape = st.get(x), st.shape(x), st.shape(out)
    c = len(shape) - 3
    factor = int(arg(op, 1, "upscale_factor" if op.name == "pixel_shuffle" else "downscale_factor"))
    for lab in labels[c + 1 :]:
        st.fix(lab)
    if op.name == "pixel_shuffle":
        channels = st.coarsen(labels[c].reshape(-1, factor * factor))
    else:
        channels = np.repeat(labels[c], factor * factor)
    st.set(out, list(labels[:c]) + [channels] + zeros_like_shape(out_shape[c + 1 :]))


def channel_shuffle(st: LabelState, op: OpRecord) -> None:
    x, out = first_tensor(op), outputs_of(op)[0]
    labels = st.get(x)
    groups = int(arg(op, 1, "groups"))
    blocks = labels[1].reshape(groups, -1)
    base = st.coarsen(blocks.T)
    st.set(out, [labels[0], np.repeat(base, groups)] + list(labels[2:]))


POINTWISE_RULES: dict[str, Rule] = {}


def _register(rule: Rule, *names: str) -> None:
    for name in names:
        POINTWISE_RULES[name] = rule


_register(
    elementwise,
    "add",
    "sub",
    "mul",
    "div",
    "floor_divide",
    "floordiv",
    "remainder",
    "fmod",
    "pow",
    "float_power",
    "maximum",
    "minimum",
    "fmax",
    "fmin",
    "relu",
    "relu6",
    "gelu",
    "silu",
    "sigmoid",
    "tanh",
    "hardswish",
    "hardsigmoid",
    "hardtanh",
    "leaky_relu",
    "elu",
    "selu",
    "celu",
    "softplus",
    "softsign",
    "mish",
    "exp",
    "exp2",
    "expm1",
    "log",
    "log1p",
    "log2",
    "log10",
    "sqrt",
    "rsqrt",
    "neg",
    "abs",
    "sign",
    "clamp",
    "clamp_min",
    "clamp_max",
    "square",
    "reciprocal",
    "erf",
    "erfc",
    "erfinv",
    "cos",
    "sin",
    "tan",
    "atan",
    "asin",
    "acos",
    "sinh",
    "cosh",
    "atan2",
    "masked_fill",
    "dropout",
    "dropout1d",
    "dropout2d",
    "dropout3d",
    "alpha_dropout",
    "feature_alpha_dropout",
    "and",
    "or",
    "xor",
    "eq",
    "ne",
    "lt",
    "gt",
    "le",
    "ge",
    "logical_and",
    "logical_or",
    "logical_not",
    "logical_xor",
    "isnan",
    "isinf",
    "isfinite",
    "nan_to_num",
    "lerp",
    "addcmul",
    "addcdiv",
    "threshold",
    "logsigmoid",
    "tanhshrink",
    "softshrink",
    "hardshrink",
    "rrelu",
    "invert",
    "bitwise_not",
    "bitwise_and",
    "bitwise_or",
    "floor",
    "ceil",
    "round",
    "trunc",
    "frac",
    "copy",
    "fill",
    "zero",
    "normalize",
    "hypot",
    "heaviside",
    "xlogy",
    "sgn",
    "positive",
)
_register(where, "where")
_register(min_max, "max", "min")
_register(
    pass_through,
    "to",
    "type",
    "type_as",
    "float",
    "half",
    "double",
    "bfloat16",
    "int",
    "long",
    "bool",
    "contiguous",
    "clone",
    "detach",
    "cpu",
    "cuda",
    "requires_grad",
    "data",
    "zeros_like",
    "ones_like",
    "empty_like",
    "full_like",
    "rand_like",
    "randn_like",
    "randint_like",
    "pin_memory",
    "coalesce",
    "resolve_conj",
    "resolve_neg",
    "conj",
    "align_as",
)
_register(creation, "new_zeros", "new_ones", "new_full", "new_empty", "new_tensor")
_register(
    reduction,
    "sum",
    "nansum",
    "mean",
    "nanmean",
    "var",
    "std",
    "var_mean",
    "std_mean",
    "amax",
    "amin",
    "norm",
    "vector_norm",
    "linalg_vector_norm",
    "prod",
    "logsumexp",
    "all",
    "any",
    "argmax",
    "argmin",
    "median",
    "nanmedian",
    "count_nonzero",
    "mode",
    "kthvalue",
)
_register(along_dim("inexact"), "softmax", "log_softmax", "softmin")
_register(along_dim("fixed"), "cumsum", "cumprod", "cummax", "cummin", "logcumsumexp", "sort", "argsort", "topk")
_register(glu, "glu")
_register(
    spatial,
    "max_pool1d",
    "max_pool2d",
    "max_pool3d",
    "avg_pool1d",
    "avg_pool2d",
    "avg_pool3d",
    "adaptive_avg_pool1d",
    "adaptive_avg_pool2d",
    "adaptive_avg_pool3d",
    "adaptive_max_pool1d",
    "adaptive_max_pool2d",
    "adaptive_max_pool3d",
    "lp_pool1d",
    "lp_pool2d",
    "lp_pool3d",
    "max_pool1d_with_indices",
    "max_pool2d_with_indices",
    "max_pool3d_with_indices",
    "fractional_max_pool2d",
    "fractional_max_pool3d",
    "interpolate",
    "upsample",
    "upsample_nearest",
    "upsample_bilinear",
)
_register(pad, "pad")
_register(pixel_shuffle, "pixel_shuffle", "pixel_unshuffle")
_register(channel_shuffle, "channel_shuffle", "native_channel_shuffle")
