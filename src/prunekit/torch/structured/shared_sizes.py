"""Reshape dimensions sized by one attribute stay equal: they are tied channel by channel.

``q.view(b, t, self.num_heads, self.head_dim)`` and ``v.view(b, t, self.num_heads, self.head_dim)``
read one ``head_dim``; after pruning, the attribute holds one new value, so both dimensions must
keep the same number of positions. Where the head structure is not understood (longformer's
heads merged into the batch for its banded attention), the query/key width and the value width
would otherwise be pruned apart and no value of ``head_dim`` could serve both. Tying the
positions (the first with the first ...) keeps them equal; it is only done where exactly one
attribute the module's code reads at that argument holds the traced size. A dimension the code
sizes with an integer literal (``x.view(y.shape[:-1] + (2, 4))``) cannot change at all: it is kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from torch import nn

from prunekit.torch.structured.labels import LabelState, tensor_refs
from prunekit.torch.structured.sources import literal_at, module_source, names_at
from prunekit.torch.structured.tracing import OpRecord, SizeOf

_RESHAPES = ("view", "reshape")


def tie_attribute_sizes(st: LabelState, modules: Mapping[str, nn.Module]) -> None:
    """Unify, position by position, the output dimensions of reshapes in one module sized by one
    attribute; keep those sized by a literal.

    Example::

        tie_attribute_sizes(state, dict(model.named_modules()))   # q's and v's head widths move together
    """
    first: dict[tuple[str, str, int], np.ndarray] = {}
    compound: list[tuple[OpRecord, np.ndarray, frozenset[str]]] = []
    for op in st.trace.ops:
        module = modules.get(op.module)
        outs = tensor_refs(op.outputs)
        if op.name not in _RESHAPES or module is None or len(outs) != 1 or outs[0].vid not in st.labels:
            continue
        labels, sizes = st.labels[outs[0].vid], _sizes(op)
        source = module_source(module)
        if source is None or len(sizes) != len(labels):
            continue
        traced = tuple(len(lab) for lab in labels)
        for position, size in enumerate(sizes):
            if _is_size(size) and size > 1 and literal_at(source, op.name, traced, position, vars(module)):
                st.fix(labels[position], f"tied at node {op.label} to a size the code writes as a literal ({size})")
                continue
            name = _single_attribute(module, source, op, len(sizes), position, size)
            if name is None:
                product = _attribute_expression(module, source, op, len(sizes), position, size)
                if product:
                    compound.append((op, labels[position], product))
                continue
            key = (op.module, name, size)
            if key not in first:
                first[key] = labels[position]
                continue
            st.reason = f"tied at node {op.label} to another dimension sized by {name!r}, which is kept there"
            st.unify(first[key], labels[position])
    _keep_pinned_products(st, first, compound)


def _keep_pinned_products(
    st: LabelState, single: dict[tuple[str, str, int], np.ndarray], compound: list[tuple[OpRecord, np.ndarray, frozenset[str]]]
) -> None:
    """Keep a dimension sized by arithmetic on attributes (convbert's ``num_attention_heads *
    attention_head_size * 2``) when each of those attributes also sizes a dimension that is kept:
    no update of them can give it another size."""
    if not compound:
        return
    roots = st.components()
    pinned = {(module, name) for (module, name, _), lab in single.items() if (roots[lab] == 0).all()}
    for op, lab, names in compound:
        if all((op.module, name) in pinned for name in names):
            st.fix(lab, f"tied at node {op.label} to a size computed from {', '.join(sorted(names))}, which are kept")


def _attribute_expression(module: nn.Module, source: str, op: OpRecord, arity: int, position: int, size: Any) -> frozenset[str]:
    """The attributes an argument computes its size from, when it reads integer attributes of the
    module and nothing else (two or more of them); empty otherwise."""
    if not _is_size(size) or isinstance(size, SizeOf) or size <= 1:
        return frozenset()
    names = names_at(source, op.name, arity, position) or frozenset()
    if len(names) < 2 or not all(_is_size(vars(module).get(n)) for n in names):
        return frozenset()
    return names


def _sizes(op: OpRecord) -> list[Any]:
    if "shape" in op.kwargs:
        return list(op.kwargs["shape"])
    rest = list(op.args[1:])
    return list(rest[0]) if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else rest


def _single_attribute(module: nn.Module, source: str, op: OpRecord, arity: int, position: int, size: Any) -> str | None:
    """The one attribute of ``module`` read at this argument (in some call of this form) that holds the
    traced size; ``None`` if none or several do."""
    if not _is_size(size) or isinstance(size, SizeOf) or size <= 1:
        return None
    names = names_at(source, op.name, arity, position) or frozenset()
    held = [n for n in sorted(names) if _is_size(vars(module).get(n)) and vars(module)[n] == size]
    return held[0] if len(held) == 1 else None


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def drop_literal_heads(head_dims: Mapping[int, int], trace: Any, modules: Mapping[str, nn.Module]) -> dict[int, int]:
    """``head_dims`` (reshape op index -> heads dimension) without the reshapes whose code sizes the heads
    with an integer literal (``q.reshape(b, t, 4, -1)``): no attribute update can remove such heads, so
    the reshape keeps its default choice, the head width (``-1``), which stays prunable.

    Example::

        state.head_dims = drop_literal_heads(state.head_dims, trace, dict(model.named_modules()))
    """
    ops = {op.index: op for op in trace.ops}
    kept = {}
    for index, dim in head_dims.items():
        op = ops[index]
        module, outs = modules.get(op.module), tensor_refs(op.outputs)
        if module is not None and op.name in _RESHAPES and len(outs) == 1:
            traced = tuple(trace.shapes[outs[0].vid])
            if literal_at(module_source(module), op.name, traced, dim, vars(module)):
                continue
        kept[index] = dim
    return kept


__all__ = ["drop_literal_heads", "tie_attribute_sizes"]
