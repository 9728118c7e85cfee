"""Sizes a forward reads from attributes, found from the graph rather than from a list of names.

Attention code reshapes with sizes it keeps on the module or its config (``view(b, t,
self.n_local_heads, d)``, ``reshape(b, t, self.inner)``, ``config.num_attention_heads``). When a
trial pruning fails verification, every size-taking op of the trace (``view``, ``reshape``,
``expand``, ``new_zeros`` ..., and ``split`` by a list of section sizes) is compared with the
shape the plan predicts for its output: a size argument equal to an output dimension that
shrinks must come from somewhere, and an integer attribute of the module running the op (or of
its ``config``) with that value, which the module's code reads, is updated to the new size. The
code read is every method of the module's class (a helper such as ``_shape(x)`` reshapes too),
and a size held in a local variable (``n_head, d_head = config.n_head, config.d_head``; ``d =
self.embed_dim // self.num_heads``) is followed back to the attributes it was computed from.
An integer attribute the code compares with a size it reads from a shrinking dimension (an input
check such as ``if x.shape[1] != self.num_channels: raise``) is updated the same way, where every
read of that value shrinks alike (longformer reads 8 both as ``head_dim``, kept, and as ``batch *
heads``, halved: the check's attribute is then left to the size arguments that read it); a size
the code read from a tensor (``c = x.shape[-1]``) needs nothing, since it follows that tensor.
A size-taking op the module's own class never writes may come from a helper method of a child that
the forward calls directly (``self.experts.map(x)`` runs under the parent's name): the children whose
code makes that call are searched next, and only then any same-valued attribute the module reads (a
module-level helper such as ``repeat_kv`` leaves no other trace). Tensor-creating calls
(``torch.zeros((1, self.n_heads, q, k))``) take sizes too.
The updates join the plan, so a saved plan replays them.
"""

from __future__ import annotations

import ast
import functools
import re
from typing import Any

import numpy as np
from torch import nn

from prunekit.torch.structured.graph import DependencyGraph
from prunekit.torch.structured.labels import tensor_refs
from prunekit.torch.structured.rules.shape import creation_sizes
from prunekit.torch.structured.sources import CREATION_OPS, module_source, names_at, parsed
from prunekit.torch.structured.tracing import SizeOf, TensorRef

_SIZE_OPS = {"view", "reshape", "expand", "broadcast_to"}
_SPLIT_OPS = {"split", "split_with_sizes"}


def _sizes(op_args: tuple) -> list[Any]:
    """The size arguments of a size-taking op (after the tensor): varargs or one tuple."""
    rest = list(op_args[1:])
    if len(rest) == 1 and isinstance(rest[0], (tuple, list)):
        rest = list(rest[0])
    return rest


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _candidates(module: nn.Module, old: int, method: str, arity: int, position: int, guess: bool = True) -> list[str]:
    """Attribute paths on ``module`` (``name`` or ``config.name``) holding ``old`` that ``forward`` reads,
    at this argument of the size call when the source shows it. Where the class's code never makes
    the call (a module-level helper such as ``repeat_kv`` does), any attribute holding ``old`` that
    the code reads is a candidate, unless ``guess`` is off."""
    source = module_source(module)
    at = names_at(source, method, arity, position)
    if at is None and not guess:
        return []
    found = []
    for name, value in vars(module).items():
        if not name.startswith("_") and _is_int(value) and value == old and (at is None or name in at):
            if source is None or re.search(rf"\bself\.{re.escape(name)}\b", source):
                found.append(name)
    config = getattr(module, "config", None)
    if config is not None and not isinstance(config, (nn.Module, dict)) and source is not None:
        for name, value in vars(config).items():
            if not name.startswith("_") and _is_int(value) and value == old and (at is None or name in at):
                if re.search(rf"\bconfig\.{re.escape(name)}\b", source):
                    found.append(f"config.{name}")
    return found


def _child_candidates(
    module: nn.Module, path: str, old: int, new: int, method: str, arity: int, position: int
) -> list[tuple[str, str, int, int]]:
    """Attributes of the module's direct children whose own code makes this call: a helper method
    the parent calls directly (``self.experts.map(x)``, which builds ``torch.zeros((n,
    self.hidden_size))``) runs the op under the parent's name, but reads the child's attributes."""
    found = []
    for name, child in module.named_children():
        child_path = f"{path}.{name}" if path else name
        found += [(child_path, attr, old, new) for attr in _candidates(child, old, method, arity, position, guess=False)]
    return found


def _size_arguments(graph: DependencyGraph, op: Any, expected: dict) -> list[tuple[str, int, int, Any, int, int]]:
    """``(method, arity, position, size argument, old size, predicted size)`` for each size an op takes:
    one per output dimension of a size-taking op, one per section of a split by a list of sizes."""
    outs = tensor_refs(op.outputs)
    shapes = graph.trace.shapes
    if (op.name in _SIZE_OPS or op.name in CREATION_OPS) and len(outs) == 1:
        old_shape = shapes[outs[0].vid]
        new_shape = expected.get(outs[0].vid, old_shape)
        sizes = creation_sizes(op) if op.name in CREATION_OPS else _sizes(op.args)
        if len(sizes) != len(old_shape):
            return []
        return [(op.name, len(sizes), i, s, o, n) for i, (s, o, n) in enumerate(zip(sizes, old_shape, new_shape))]
    sections = op.args[1] if len(op.args) > 1 else op.kwargs.get("split_size")
    if op.name not in _SPLIT_OPS or not isinstance(sections, (tuple, list)) or len(sections) != len(outs) or not outs:
        return []
    ndim = len(shapes[outs[0].vid])
    dim = op.args[2] if len(op.args) > 2 else op.kwargs.get("dim", 0)
    dim = dim + ndim if _is_int(dim) and dim < 0 else dim
    if not _is_int(dim) or not 0 <= dim < ndim:
        return []
    found = []
    for i, (size, out) in enumerate(zip(sections, outs)):
        old = shapes[out.vid][dim]
        found.append(("split", len(sections), i, size, old, expected.get(out.vid, shapes[out.vid])[dim]))
    return found


@functools.lru_cache(maxsize=256)
def _compared_names(source: str | None) -> frozenset[str]:
    """Attribute names the code compares with a computed value (``if c != self.num_channels: raise``).

    A comparison with a literal (``if self.sr_ratio > 1``) is a setting, not a size check: its
    attributes are left out, however their values happen to match a shrinking dimension."""
    tree = parsed(source) if source is not None else None
    if tree is None:
        return frozenset()
    compares = [n for n in ast.walk(tree) if isinstance(n, ast.Compare)]
    return frozenset(
        sub.attr
        for node in compares
        if not any(isinstance(part, ast.Constant) for part in (node.left, *node.comparators))
        for part in (node.left, *node.comparators)
        for sub in ast.walk(part)
        if isinstance(sub, ast.Attribute)
    )


def _read_sizes(graph: DependencyGraph, expected: dict) -> dict[str, dict[int, set[int]]]:
    """Per module, each size its code reads from a tensor (``x.shape``, ``x.size(1)``) and what
    those reads become after the pruning: ``{module: {8: {4}}}``."""
    found: dict[str, dict[int, set[int]]] = {}
    for op in graph.trace.ops:
        if op.name not in ("size", "shape") or not op.args or not isinstance(op.args[0], TensorRef):
            continue
        old_shape = graph.trace.shapes[op.args[0].vid]
        new_shape = expected.get(op.args[0].vid, old_shape)
        dims = range(len(old_shape))
        if op.name == "size" and len(op.args) > 1 and _is_int(op.args[1]):
            dims = range(op.args[1] % len(old_shape), op.args[1] % len(old_shape) + 1)
        reads = found.setdefault(op.module, {})
        for d in dims:
            reads.setdefault(old_shape[d], set()).add(new_shape[d])
    return found


def _checked_sizes(reads: dict[int, set[int]], module: nn.Module) -> list[tuple[str, int, int]]:
    """``(attribute, old, new)`` for each integer attribute of ``module`` that its code compares with
    a size it reads from a dimension that shrinks: an input check such as ``if num_channels !=
    self.num_channels: raise``, which must accept the pruned width. Where reads of the attribute's
    value become different sizes (one dimension of 8 shrinks to 4, another stays 8), which one the
    check compares is unknown, and the attribute is left to the size arguments that read it."""
    changed = {old: next(iter(new)) for old, new in reads.items() if len(new) == 1 and old not in new}
    if not changed:
        return []
    compared = _compared_names(module_source(module))
    return [
        (name, value, changed[value])
        for name, value in vars(module).items()
        if not name.startswith("_") and _is_int(value) and value in changed and name in compared
    ]


def size_attribute_repairs(model: nn.Module, graph: DependencyGraph, removed: np.ndarray) -> list[dict[str, Any]]:
    """Attribute updates making every size-taking op produce the predicted shape, as plan records.

    Example::

        extra = size_attribute_repairs(model, graph, graph.removed_roots(selection))
        # [{"module": "blocks.0.attn", "name": "n_local_heads", "old": 8, "value": 4}, ...]
    """
    modules = dict(model.named_modules())
    expected = graph.expected_shapes(removed)
    wanted: dict[tuple[str, str], tuple[int, int]] = {}
    conflicts: set[tuple[str, str]] = set()
    reads = _read_sizes(graph, expected)
    for path, sizes in reads.items():
        if path in modules:
            for name, old, new in _checked_sizes(sizes, modules[path]):
                wanted[(path, name)] = (old, new)
    for op in graph.trace.ops:
        if op.module not in modules:
            continue
        found = []
        for method, arity, position, size, old, new in _size_arguments(graph, op, expected):
            if not _is_int(size) or isinstance(size, SizeOf) or size != old or old == new:  # a read size follows by itself
                continue
            module = modules[op.module]
            here = _candidates(module, old, method, arity, position, guess=False)
            children = [] if here else _child_candidates(module, op.module, old, new, method, arity, position)
            if not here and not children:
                here = _candidates(module, old, method, arity, position)
            found += [(op.module, name, old, new) for name in here] + children
        for path, name, old, new in found:
            key = (path, name)
            if key in wanted and wanted[key] != (old, new):
                conflicts.add(key)
            wanted[key] = (old, new)
    return [
        {"module": module, "name": name, "old": old, "value": new}
        for (module, name), (old, new) in wanted.items()
        if (module, name) not in conflicts
    ]


__all__ = ["size_attribute_repairs"]
