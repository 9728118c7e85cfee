"""Method names live in the registry's built-in definitions only: every front end asks the registry."""

from __future__ import annotations

import ast

from prunekit.methods import list_methods
from tests.architecture.import_graph import PACKAGE

BUILTIN = PACKAGE / "methods" / "builtin.py"
# words that are also other vocabulary: a scope ("layer"), an importance ("random", "magnitude"), a kind of
# method ("structured"), a dict key and allocate.pruning's value ("channels"); such literals are not dispatch
VOCABULARY = {"layer", "random", "magnitude", "structured", "channels", "set", "rigl"}  # + regrow= values (prunekit.dynamic)


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def method_name_literals() -> list[str]:
    """``file:line: 'name'`` for every string literal in ``src/prunekit`` (docstrings aside) equal to a method name."""
    names = {n for m in list_methods() for n in (m.name, *m.aliases)} - VOCABULARY
    hits = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == BUILTIN:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                if node.value in names:
                    hits.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {node.value!r}")
    return hits


def test_method_names_appear_only_in_the_builtin_definitions():
    assert method_name_literals() == []


def test_the_builtin_file_defines_every_builtin_name():
    text = BUILTIN.read_text(encoding="utf-8")
    from prunekit.methods.builtin import BUILTIN_METHODS

    assert all(f'"{m.name}"' in text for m in BUILTIN_METHODS)
