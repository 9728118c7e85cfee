"""Sizes a forward reads from attributes, found from the graph rather than from a list of names.

Attention code reshapes with sizes it keeps on the module or its config (``view(b, t,
self.n_local_heads, d)``, ``reshape(b, t, self.inner)``, ``config.num_attention_heads``). When a
trial pruning fails verification, every size-taking op of the trace (``view``, ``reshape``,
``expand``, ``new_zeros`` ...) is compared with the shape the plan predicts for its output: a
size argument equal to an output dimension that shrinks must come from somewhere, and an integer
attribute of the module running the op (or of its ``config``) with that value, which the
module's ``forward`` reads, is updated to the new size. The updates join the plan, so a saved
plan replays them.
"""

from __future__ import annotations

import ast
import inspect
import re
import textwrap
from typing import Any

import numpy as np
from torch import nn

from prunekit.torch.structured.graph import DependencyGraph
from prunekit.torch.structured.labels import tensor_refs

_SIZE_OPS = {"view", "reshape", "expand", "new_zeros", "new_ones", "new_empty", "new_full", "broadcast_to"}


def _sizes(op_args: tuple) -> list[Any]:
    """The size arguments of a size-taking op (after the tensor): varargs or one tuple."""
    rest = list(op_args[1:])
    if len(rest) == 1 and isinstance(rest[0], (tuple, list)):
        rest = list(rest[0])
    return rest


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _forward_source(module: nn.Module) -> str | None:
    try:
        return inspect.getsource(type(module).forward)
    except (OSError, TypeError):
        return None


def _names_at(source: str | None, method: str, arity: int, position: int) -> set[str] | None:
    """Attribute names the forward's ``.method(...)`` calls with ``arity`` sizes use at argument
    ``position`` (``self.h`` and ``config.h`` both give ``h``), or ``None`` if no call matches."""
    if source is None:
        return None
    try:
        tree = ast.parse(textwrap.dedent(source))
    except SyntaxError:
        return None
    names: set[str] | None = None
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == method):
            continue
        args = node.args
        if len(args) == 1 and isinstance(args[0], (ast.Tuple, ast.List)):
            args = list(args[0].elts)
        if len(args) != arity or any(isinstance(a, ast.Starred) for a in args):
            continue
        names = names or set()
        names.update(n.attr for n in ast.walk(args[position]) if isinstance(n, ast.Attribute))
    return names


def _candidates(module: nn.Module, old: int, method: str, arity: int, position: int) -> list[str]:
    """Attribute paths on ``module`` (``name`` or ``config.name``) holding ``old`` that ``forward`` reads,
    at this argument of the size call when the source shows it."""
    source = _forward_source(module)
    at = _names_at(source, method, arity, position)
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
    for op in graph.trace.ops:
        if op.name not in _SIZE_OPS or op.module not in modules:
            continue
        outs = tensor_refs(op.outputs)
        if len(outs) != 1:
            continue
        old_shape = graph.trace.shapes[outs[0].vid]
        new_shape = expected.get(outs[0].vid, old_shape)
        sizes = _sizes(op.args)
        if len(sizes) != len(old_shape):
            continue
        for position, (size, old, new) in enumerate(zip(sizes, old_shape, new_shape)):
            if not _is_int(size) or size != old or old == new:
                continue
            for name in _candidates(modules[op.module], old, op.name, len(sizes), position):
                key = (op.module, name)
                if key in wanted and wanted[key] != (old, new):
                    conflicts.add(key)
                wanted[key] = (old, new)
    return [
        {"module": module, "name": name, "old": old, "value": new}
        for (module, name), (old, new) in wanted.items()
        if (module, name) not in conflicts
    ]


__all__ = ["size_attribute_repairs"]
