"""How channel labels flow through layers with weights: convolutions, matrix products,
normalisations, embeddings and attention (recurrent layers are in ``_rules_recurrent``).

Weight dimensions that create output channels are marked *producers*; a channel can only be
pruned if some producer makes it. Weight dimensions that read input channels are *consumers*.
"""

from __future__ import annotations

import inspect
import re

import numpy as np
import torch.nn.functional as F

from prunekit.torch.structured.labels import (
    FIXED,
    AttentionRecord,
    Labels,
    LabelState,
    NormRecord,
    arg,
    as_int_list,
    is_tensor,
    tensor_refs,
    zeros_like_shape,
)
from prunekit.torch.structured.rules.recurrent import RECURRENT_RULES
from prunekit.torch.structured.rules.shape import Rule, broadcast_unify
from prunekit.torch.structured.tracing import OpRecord, TensorRef


def _out(op: OpRecord) -> TensorRef:
    return tensor_refs(op.outputs)[0]


def _rank(name: str) -> int:
    match = re.search(r"([123])d", name)
    return int(match.group(1)) if match else 2


# -- convolutions -------------------------------------------------------------------------


def conv(st: LabelState, op: OpRecord) -> None:
    """``conv{1,2,3}d``: out channels come from weight dim 0; grouped convs keep groups equal.

    Depthwise-style convs (one input channel per group) tie each input channel to its outputs
    and shrink ``groups``; other grouped convs remove the same in-group positions from every
    group and keep ``groups``.
    """
    x, w, b = arg(op, 0, "input"), arg(op, 1, "weight"), arg(op, 2, "bias")
    groups = int(arg(op, 6, "groups", 1))
    xl, wl = st.get(x), st.get(w)
    c = len(st.shape(x)) - _rank(op.name) - 1
    cin, cout = len(xl[c]), len(wl[0])
    for lab in wl[2:]:
        st.fix(lab)
    if groups == 1:
        st.unify(xl[c], wl[1])
    elif cin // groups == 1:
        st.unify(np.repeat(xl[c], cout // groups), wl[0])
    else:
        st.unify(xl[c], np.tile(wl[1], groups))
        per = cout // groups
        st.unify(wl[0], np.tile(wl[0][:per], groups))
    st.mark_producer(w, 0)
    st.mark_consumer(w, 1)
    if is_tensor(b):
        st.unify(st.get(b)[0], wl[0])
    _set_conv_output(st, op, xl, c, wl[0])


def conv_transpose(st: LabelState, op: OpRecord) -> None:
    """``conv_transpose{1,2,3}d``: weight is (in, out/groups, k...); grouped ones drop whole groups."""
    x, w, b = arg(op, 0, "input"), arg(op, 1, "weight"), arg(op, 2, "bias")
    groups = int(arg(op, 6, "groups", 1))
    xl, wl = st.get(x), st.get(w)
    c = len(st.shape(x)) - _rank(op.name) - 1
    for lab in wl[2:]:
        st.fix(lab)
    st.unify(xl[c], wl[0])
    st.mark_consumer(w, 0)
    if groups == 1:
        out_channels = wl[1]
        st.mark_producer(w, 1)
    else:
        st.fix(wl[1])
        heads = st.coarsen(xl[c].reshape(groups, -1))
        out_channels = np.repeat(heads, len(wl[1]))
    if is_tensor(b):
        st.unify(st.get(b)[0], out_channels)
    _set_conv_output(st, op, xl, c, out_channels)


def _set_conv_output(st: LabelState, op: OpRecord, xl: Labels, c: int, channels: np.ndarray) -> None:
    out = _out(op)
    shape = st.shape(out)
    st.set(out, list(xl[:c]) + [channels] + zeros_like_shape(shape[c + 1 :]))


# -- matrix products ----------------------------------------------------------------------


def linear(st: LabelState, op: OpRecord) -> None:
    x, w, b = arg(op, 0, "input"), arg(op, 1, "weight"), arg(op, 2, "bias")
    xl, wl = st.get(x), st.get(w)
    if len(wl) != 2:
        st.unsupported_op(op, "linear with a weight that is not 2-D")
        return
    st.unify(xl[-1], wl[1])
    st.mark_producer(w, 0)
    st.mark_consumer(w, 1)
    if is_tensor(b):
        st.unify(st.get(b)[0], wl[0])
    st.set(_out(op), list(xl[:-1]) + [wl[0]])


def _matmul_labels(st: LabelState, op: OpRecord, a: TensorRef, b: TensorRef) -> Labels | None:
    al, bl = list(st.get(a)), list(st.get(b))
    a_vec, b_vec = len(al) == 1, len(bl) == 1
    if a_vec:
        al = [np.zeros(1, np.int64)] + al
    if b_vec:
        bl = bl + [np.zeros(1, np.int64)]
    st.unify(al[-1], bl[-2])
    batch_a, batch_b = al[:-2], bl[:-2]
    ndim = max(len(batch_a), len(batch_b))
    batch_shape = []
    for k in range(ndim):
        sa = len(batch_a[k - ndim + len(batch_a)]) if k - ndim + len(batch_a) >= 0 else 1
        sb = len(batch_b[k - ndim + len(batch_b)]) if k - ndim + len(batch_b) >= 0 else 1
        batch_shape.append(max(sa, sb))
    batch = _broadcast_labels(st, [batch_a, batch_b], tuple(batch_shape))
    out = batch + ([] if a_vec else [al[-2]]) + ([] if b_vec else [bl[-1]])
    if not b_vec and st.tensor_name(b) is not None:
        st.mark_producer(b, len(bl) - 1)
        st.mark_consumer(b, len(bl) - 2)
    if not a_vec and st.tensor_name(a) is not None:
        st.mark_producer(a, len(st.get(a)) - 2)
        st.mark_consumer(a, len(st.get(a)) - 1)
    if len(al) >= 4 and len(bl) >= 4 and st.tensor_name(a) is None and st.tensor_name(b) is None and len(al[-3]) > 1:
        st.attention.append(AttentionRecord(op.index, op.module, al[-3].copy(), bl[-3].copy(), len(al[-1])))
    return out


def _broadcast_labels(st: LabelState, parts: list[Labels], shape: tuple[int, ...]) -> Labels:
    result: list[np.ndarray | None] = [None] * len(shape)
    for labels in parts:
        offset = len(shape) - len(labels)
        for d, lab in enumerate(labels):
            od = d + offset
            if len(lab) == shape[od]:
                if result[od] is None:
                    result[od] = lab
                else:
                    st.unify(result[od], lab)
    return [lab if lab is not None else np.zeros(shape[k], np.int64) for k, lab in enumerate(result)]


def matmul(st: LabelState, op: OpRecord) -> None:
    """``matmul``/``mm``/``bmm``/``mv``/``dot`` and the ``add*`` forms (``addmm``: bias + a @ b)."""
    named = ("input", "batch1", "batch2", "mat1", "mat2", "mat", "vec", "vec1", "vec2", "other")
    refs = [r for r in op.args if is_tensor(r)] + [op.kwargs[k] for k in named if is_tensor(op.kwargs.get(k))]
    out = _out(op)
    if op.name in ("addmm", "addbmm", "baddbmm", "addmv", "addr"):
        bias, a, b = refs[0], refs[1], refs[2]
    else:
        bias, (a, b) = None, refs[:2]
    if op.name == "addr":
        st.unsupported_op(op, "outer products are not followed")
        return
    labels = _matmul_labels(st, op, a, b)
    out_shape = st.shape(out)
    if labels is None or [len(x) for x in labels] != list(out_shape):
        if op.name == "addbmm" and labels is not None and [len(x) for x in labels[1:]] == list(out_shape):
            labels = labels[1:]
        else:
            st.unsupported_op(op, f"could not follow matrix product to shape {out_shape}")
            return
    if bias is not None:
        st.set(out, labels)
        labels = broadcast_unify(st, [out, bias], out_shape)
    st.set(out, labels)


def einsum(st: LabelState, op: OpRecord) -> None:
    equation = op.args[0]
    operands = list(op.args[1:])
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = list(operands[0])
    equation = equation.replace(" ", "")
    lhs, _, rhs = equation.partition("->")
    terms = lhs.split(",")
    if "..." in equation or len(terms) != len(operands):
        st.unsupported_op(op, "einsum with ellipsis")
        return
    letters: dict[str, np.ndarray] = {}
    for term, operand in zip(terms, operands):
        labels = st.get(operand)
        for letter, lab in zip(term, labels):
            if letter not in letters or len(letters[letter]) == 1:
                letters[letter] = lab
            elif len(lab) != 1:
                st.unify(letters[letter], lab)
    if not rhs and "->" not in equation:
        rhs = "".join(sorted(ch for ch in letters if lhs.count(ch) == 1))
    out = _out(op)
    st.set(out, [letters[ch] for ch in rhs])
    for term, operand in zip(terms, operands):
        if st.tensor_name(operand) is not None:
            for d, letter in enumerate(term):
                (st.mark_producer if letter in rhs else st.mark_consumer)(operand, d)
    _record_einsum_heads(st, op, terms, operands, rhs)


def _record_einsum_heads(st: LabelState, op: OpRecord, terms: list[str], operands: list, rhs: str) -> None:
    """An ``einsum`` of two computed tensors that carries a labelled letter from both to its output
    and contracts another (``bhqd,bhkd->bhqk``; longformer's ``bcxd,bcyd->bcxy`` with the heads merged
    into the batch) is an attention product: that letter holds its heads (each head once, however
    often a merged batch repeats it)."""
    computed = [(t, o) for t, o in zip(terms, operands) if st.tensor_name(o) is None]
    if len(computed) != 2 or all(ch in rhs for t, _ in computed for ch in t):
        return
    (ta, a), (tb, b) = computed
    for letter in rhs:
        if letter in ta and letter in tb:
            heads_a, heads_b = st.get(a)[ta.index(letter)], st.get(b)[tb.index(letter)]
            if (heads_a != FIXED).any() and len(heads_a) > 1:
                contracted = [ch for ch in ta if ch in tb and ch not in rhs]
                width = len(st.get(a)[ta.index(contracted[0])]) if contracted else 0
                st.attention.append(AttentionRecord(op.index, op.module, _distinct(heads_a), _distinct(heads_b), width))
                return


def _distinct(atoms: np.ndarray) -> np.ndarray:
    """The atoms in order of first appearance, each once."""
    _, first = np.unique(atoms, return_index=True)
    return atoms[np.sort(first)].copy()


# -- normalisation ------------------------------------------------------------------------


def batch_norm(st: LabelState, op: OpRecord) -> None:
    """``batch_norm``/``instance_norm``: per-channel statistics and affine, channel dim 1."""
    x = arg(op, 0, "input")
    xl = st.get(x)
    c = 1 if len(xl) > 1 else 0
    for index, name in ((1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias")):
        t = arg(op, index, name)
        if is_tensor(t):
            st.unify(st.get(t)[0], xl[c])
    st.set(_out(op), xl)


def layer_norm(st: LabelState, op: OpRecord) -> None:
    """``layer_norm``/``rms_norm``: statistics over the last dims, so pruning them is inexact."""
    x = arg(op, 0, "input")
    xl = st.get(x)
    shape = as_int_list(arg(op, 1, "normalized_shape"))
    dims = xl[len(xl) - len(shape) :]
    for index, name in ((2, "weight"), (3, "bias")):
        t = arg(op, index, name)
        if is_tensor(t):
            for lab, own in zip(dims, st.get(t)):
                st.unify(own, lab)
    for lab in dims:
        st.mark_inexact(lab)
    st.norms.append(NormRecord(op.index, op.module, op.name, list(dims)))
    st.set(_out(op), xl)


def group_norm(st: LabelState, op: OpRecord) -> None:
    """``group_norm``: whole groups are removed unless every channel is its own group or there
    is one group (then channels are free; with one group the statistics change)."""
    x = arg(op, 0, "input")
    xl = st.get(x)
    groups = int(arg(op, 1, "num_groups"))
    channels = xl[1]
    if groups == 1:
        st.mark_inexact(channels)
    elif groups != len(channels):
        st.coarsen(channels.reshape(groups, -1))
    for index, name in ((2, "weight"), (3, "bias")):
        t = arg(op, index, name)
        if is_tensor(t):
            st.unify(st.get(t)[0], channels)
    st.norms.append(NormRecord(op.index, op.module, op.name, [channels], groups))
    st.set(_out(op), xl)


def local_response_norm(st: LabelState, op: OpRecord) -> None:
    xl = st.get(arg(op, 0, "input"))
    st.fix(xl[1])
    st.set(_out(op), xl)


# -- embeddings and activations with weights ----------------------------------------------


def embedding(st: LabelState, op: OpRecord) -> None:
    ids, w = arg(op, 0, "input"), arg(op, 1, "weight")
    wl = st.get(w)
    st.fix(wl[0])
    st.mark_producer(w, 1)
    st.set(_out(op), list(st.get(ids)) + [wl[1]])


def prelu(st: LabelState, op: OpRecord) -> None:
    x, w = arg(op, 0, "input"), arg(op, 1, "weight")
    xl, wl = st.get(x), st.get(w)
    if len(wl) == 1 and len(wl[0]) > 1:
        st.unify(wl[0], xl[1 if len(xl) > 1 else 0])
    st.set(_out(op), xl)


# -- attention ----------------------------------------------------------------------------


def scaled_dot_product_attention(st: LabelState, op: OpRecord) -> None:
    """SDPA on (..., heads, L, E): heads of q/k/v are tied; with ``enable_gqa`` each key/value
    head is tied to its group of query heads, so whole groups go together."""
    q, k, v = arg(op, 0, "query"), arg(op, 1, "key"), arg(op, 2, "value")
    mask = arg(op, 3, "attn_mask")
    scale = op.kwargs.get("scale", op.args[6] if len(op.args) > 6 else None)
    ql, kl, vl = st.get(q), st.get(k), st.get(v)
    if len(ql) < 3:
        st.unsupported_op(op, "attention without a head dimension")
        return
    hq, hk = len(ql[-3]), len(kl[-3])
    if hq == hk:
        st.unify(ql[-3], kl[-3])
    elif hk == 1:
        pass  # multi-query: the one key/value head serves any number of query heads
    elif hq % hk == 0:
        st.unify(ql[-3], np.repeat(kl[-3], hq // hk))
    else:
        st.unsupported_op(op, f"{hq} query heads do not divide into {hk} key heads")
        return
    st.unify(kl[-3], vl[-3])
    batch = broadcast_unify_labels(st, [ql[:-3], kl[:-3], vl[:-3]])
    st.unify(ql[-1], kl[-1])
    if scale is None:
        st.mark_inexact(ql[-1])
    st.mark_inexact(kl[-2])
    if is_tensor(mask):
        scores = batch + [ql[-3], ql[-2], kl[-2]]
        shape = tuple(len(x) for x in scores)
        ml = st.get(mask)
        offset = len(shape) - len(ml)
        for d, lab in enumerate(ml):
            if len(lab) == shape[d + offset] and len(lab) > 1:
                st.unify(lab, scores[d + offset])
    st.attention.append(AttentionRecord(op.index, op.module, ql[-3].copy(), kl[-3].copy(), len(ql[-1])))
    st.set(_out(op), batch + [ql[-3], ql[-2], vl[-1]])


def broadcast_unify_labels(st: LabelState, parts: list[Labels]) -> Labels:
    ndim = max(len(p) for p in parts)
    shape = tuple(max((len(p[d - ndim + len(p)]) for p in parts if d - ndim + len(p) >= 0), default=1) for d in range(ndim))
    return _broadcast_labels(st, parts, shape)


_MHA_SIGNATURE = inspect.signature(F.multi_head_attention_forward)


def multi_head_attention(st: LabelState, op: OpRecord) -> None:
    """``nn.MultiheadAttention``: whole heads go together across q/k/v rows and out_proj columns.

    Its functional form requires ``embed_dim == num_heads * head_dim``, so each removed head is
    paired with ``head_dim`` channels of the embedding it reads and writes.
    """
    a = _MHA_SIGNATURE.bind(*op.args, **op.kwargs)
    a.apply_defaults()
    p = a.arguments
    query, key, value = p["query"], p["key"], p["value"]
    heads = int(p["num_heads"])
    ql = st.get(query)
    embed = len(ql[-1])
    head_dim = embed // heads
    if p["use_separate_proj_weight"]:
        rows = []
        for name, inp in (("q_proj_weight", query), ("k_proj_weight", key), ("v_proj_weight", value)):
            w = p[name]
            st.unify(st.get(inp)[-1], st.get(w)[1])
            st.mark_producer(w, 0)
            st.mark_consumer(w, 1)
            rows.append(st.get(w)[0])
        qr, kr, vr = rows
    else:
        w = p["in_proj_weight"]
        wl = st.get(w)
        for inp in (query, key, value):
            st.unify(st.get(inp)[-1], wl[1])
        st.mark_producer(w, 0)
        st.mark_consumer(w, 1)
        qr, kr, vr = wl[0][:embed], wl[0][embed : 2 * embed], wl[0][2 * embed :]
    if is_tensor(p["in_proj_bias"]):
        st.unify(st.get(p["in_proj_bias"])[0], np.concatenate([qr, kr, vr]))
    for name, rows in (("bias_k", kr), ("bias_v", vr)):
        if is_tensor(p[name]):
            st.unify(st.get(p[name])[-1], rows)
    ow = p["out_proj_weight"]
    owl = st.get(ow)
    st.mark_producer(ow, 0)
    st.mark_consumer(ow, 1)
    if is_tensor(p["out_proj_bias"]):
        st.unify(st.get(p["out_proj_bias"])[0], owl[0])
    blocks = np.concatenate([r.reshape(heads, head_dim) for r in (qr, kr, vr, owl[1], ql[-1])], axis=1)
    head_atoms = st.coarsen(blocks)
    st.attention.append(AttentionRecord(op.index, op.module, head_atoms, head_atoms, head_dim))
    outs = tensor_refs(op.outputs)
    if outs:
        st.set(outs[0], list(ql[:-1]) + [owl[0]])
    for extra in outs[1:]:
        st.set(extra, zeros_like_shape(st.shape(extra)))
    for mask_name in ("key_padding_mask", "attn_mask"):
        if is_tensor(p[mask_name]):
            st.fix_value(p[mask_name])


LAYER_RULES: dict[str, Rule] = {}
for _name in ("conv1d", "conv2d", "conv3d"):
    LAYER_RULES[_name] = conv
for _name in ("conv_transpose1d", "conv_transpose2d", "conv_transpose3d"):
    LAYER_RULES[_name] = conv_transpose
for _name in ("matmul", "mm", "bmm", "mv", "dot", "vdot", "inner", "addmm", "addbmm", "baddbmm", "addmv", "addr"):
    LAYER_RULES[_name] = matmul
LAYER_RULES.update(
    {
        "linear": linear,
        "einsum": einsum,
        "batch_norm": batch_norm,
        "instance_norm": batch_norm,
        "layer_norm": layer_norm,
        "rms_norm": layer_norm,
        "group_norm": group_norm,
        "local_response_norm": local_response_norm,
        "embedding": embedding,
        "prelu": prelu,
        "scaled_dot_product_attention": scaled_dot_product_attention,
        "multi_head_attention_forward": multi_head_attention,
    }
)
LAYER_RULES.update(RECURRENT_RULES)
