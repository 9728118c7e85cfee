"""What a module's code says about the sizes it passes: the attributes read at each argument of a call.

Attention code reshapes with sizes it keeps on the module or its config (``view(b, t,
self.n_local_heads, d)``). The source of the module's class (every method, so helpers count) is
parsed once; :func:`names_at` gives the attribute names an argument of a call reads, directly or
through local variables assigned from them (``d = self.embed_dim // self.num_heads``). Both the
analysis (sizes from one attribute stay equal) and the repair after a trial pruning (which
attributes to update) read it.
"""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap
from collections.abc import Iterator, Mapping
from typing import Any

from torch import nn

#: Calls that create a tensor from sizes alone (no tensor argument before them, except ``new_*``'s self).
CREATION_OPS = frozenset({"zeros", "ones", "empty", "full", "new_zeros", "new_ones", "new_empty", "new_full"})
_MAX_NAME_HOPS = 4  # local variables followed back per size argument (``d = h; h = self.x``)


def module_source(module: nn.Module) -> str | None:
    """The source of the module's class and its bases below ``nn.Module`` (forward and helpers)."""
    return class_source(type(module))


@functools.lru_cache(maxsize=256)
def class_source(cls: type) -> str | None:
    parts = []
    for base in cls.__mro__:
        if base in (nn.Module, object) or base.__module__.startswith("torch."):
            continue
        try:
            parts.append(textwrap.dedent(inspect.getsource(base)))
        except (OSError, TypeError):
            continue
    return "\n".join(parts) or None


@functools.lru_cache(maxsize=256)
def parsed(source: str) -> ast.Module | None:
    """The syntax tree of a class's source, parsed once however many size ops it runs."""
    try:
        return ast.parse(source)
    except SyntaxError:
        return None


def _assignments(tree: ast.AST) -> dict[str, list[ast.expr]]:
    """What each local name is assigned from (``a, b = x, y`` pairs ``a`` with ``x``)."""
    found: dict[str, list[ast.expr]] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Assign):
            continue
        for target in node.targets:
            if isinstance(target, ast.Name):
                found.setdefault(target.id, []).append(node.value)
            elif isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple) and len(target.elts) == len(node.value.elts):
                for name, value in zip(target.elts, node.value.elts):
                    if isinstance(name, ast.Name):
                        found.setdefault(name.id, []).append(value)
    return found


def _attributes_in(node: ast.expr, assigned: dict[str, list[ast.expr]]) -> set[str]:
    """Attribute names an expression reads, directly or through local variables assigned from them."""
    names: set[str] = set()
    todo, seen = [(node, 0)], set()
    while todo:
        expr, hops = todo.pop()
        for sub in _read_nodes(expr):
            if isinstance(sub, ast.Attribute):
                names.add(sub.attr)
            elif isinstance(sub, ast.Name) and hops < _MAX_NAME_HOPS and sub.id not in seen:
                seen.add(sub.id)
                todo.extend((value, hops + 1) for value in assigned.get(sub.id, ()))
    return names


_SIZE_READS = frozenset({"size", "dim", "numel", "stride"})


def _read_nodes(expr: ast.expr) -> Iterator[ast.AST]:
    """The nodes of an expression, except inside a size read from a tensor (``x.shape``,
    ``x.size(0)``): that size is the tensor's, traced as such while the model runs, not the
    attributes the tensor was built from (``b = k.shape[0]`` after ``k = k.view(.., self.head_dim)``
    does not read ``head_dim``)."""
    stack: list[ast.AST] = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Attribute) and node.attr == "shape":
            continue
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _SIZE_READS:
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


@functools.lru_cache(maxsize=1024)
def names_at(source: str | None, method: str, arity: int, position: int) -> frozenset[str] | None:
    """Attribute names the forward's ``.method(...)`` calls with ``arity`` sizes use at argument
    ``position`` (``self.h`` and ``config.h`` both give ``h``), or ``None`` if no call matches. A
    call ``x.view(y.shape[:-1] + (a, b))`` gives its last two sizes."""
    if source is None:
        return None
    tree = parsed(source)
    if tree is None:
        return None
    assigned = _assigned(source)
    names: set[str] | None = None
    for args in _size_calls(source, method):
        aligned = _aligned(args, arity)
        if aligned is None or position not in aligned:
            continue
        names = names or set()
        names.update(_attributes_in(aligned[position], assigned))
    return None if names is None else frozenset(names)


def literal_at(source: str | None, method: str, sizes: tuple[int, ...], position: int, values: Mapping[str, Any]) -> bool:
    """Whether the ``.method(...)`` calls of the code that can have made this op (``sizes`` traced;
    their literals and the attributes in ``values`` agree with them) all write an integer literal at
    ``position``, and at least one does: a size no attribute update can change. A call is read whole
    (``x.view(b, t, 2, 4)``) or by its tail (``x.view(y.shape[:-1] + (2, 4))`` gives the last sizes)."""
    if source is None:
        return False
    found = False
    for args in _size_calls(source, method):
        aligned = _aligned(args, len(sizes))
        if aligned is None or position not in aligned or not _agrees(aligned, sizes, values):
            continue
        if _literal(aligned[position]) is None:
            return False
        found = True
    return found


def _aligned(args: list[ast.expr], arity: int) -> dict[int, ast.expr] | None:
    if len(args) == 1 and isinstance(args[0], ast.BinOp) and isinstance(args[0].op, ast.Add):
        tail = args[0].right
        if isinstance(tail, ast.Tuple) and len(tail.elts) <= arity:
            return {arity - len(tail.elts) + k: e for k, e in enumerate(tail.elts)}
        return None
    starred = [k for k, a in enumerate(args) if isinstance(a, ast.Starred)]
    if not starred and len(args) == arity:
        return dict(enumerate(args))
    if len(starred) == 1 and len(args) - 1 <= arity:  # (*input_shape, -1, self.head_dim): ends align
        at = starred[0]
        return {**dict(enumerate(args[:at])), **{arity - len(args) + k: a for k, a in enumerate(args) if k > at}}
    return None


def _literal(expr: ast.expr) -> int | None:
    """The integer a size argument writes literally (``-1``, inferred, is not one)."""
    if isinstance(expr, ast.Constant) and isinstance(expr.value, int) and not isinstance(expr.value, bool):
        return expr.value if expr.value != -1 else None
    return None


def _agrees(aligned: dict[int, ast.expr], sizes: tuple[int, ...], values: Mapping[str, Any]) -> bool:
    for at, expr in aligned.items():
        literal = _literal(expr)
        if literal is not None and literal != sizes[at]:
            return False
        if isinstance(expr, ast.Attribute) and isinstance(values.get(expr.attr), int) and values[expr.attr] != sizes[at]:
            return False
    return True


@functools.lru_cache(maxsize=256)
def _assigned(source: str) -> dict[str, list[ast.expr]]:
    tree = parsed(source)
    return _assignments(tree) if tree is not None else {}


@functools.lru_cache(maxsize=1024)
def _size_calls(source: str, method: str) -> tuple[list[ast.expr], ...]:
    """The size arguments of every call of ``method`` in the code (a single tuple unpacked; a single
    local variable, ``view(hidden_shape)`` or ``view(*new_shape)``, replaced by what it is assigned),
    read once per class and method."""
    tree = parsed(source)
    if tree is None:
        return ()
    assigned = _assigned(source)
    calls = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name))):
            continue
        if (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) != method:
            continue
        args = node.args
        if method not in CREATION_OPS and (isinstance(node.func, ast.Name) or _is_torch(node.func)):
            args = args[1:]  # torch.split(x, sizes): after the tensor (torch.zeros(sizes) has none)
        if method in ("split", "full", "new_full"):  # the sizes, not the dimension or value after them
            args = args[:1]
        if len(args) == 1:
            name = args[0].value if isinstance(args[0], ast.Starred) else args[0]
            if isinstance(name, ast.Name) and len(assigned.get(name.id, ())) == 1:
                args = [assigned[name.id][0]]
        if len(args) == 1 and isinstance(args[0], (ast.Tuple, ast.List)):
            args = list(args[0].elts)
        calls.append(list(args))
    return tuple(calls)


def _is_torch(func: ast.Attribute) -> bool:
    return isinstance(func.value, ast.Name) and func.value.id in ("torch", "F")


__all__ = ["CREATION_OPS", "class_source", "literal_at", "module_source", "names_at", "parsed"]
