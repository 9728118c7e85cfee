"""The public namespace of ``prunekit.torch``: what the docs use is there; what left it still works, with a warning."""

from __future__ import annotations

import ast
import importlib
import re
import warnings
from pathlib import Path

import pytest

import prunekit.torch as pt

ROOT = Path(__file__).resolve().parents[2]


def _documented_names() -> set[str]:
    """Names that README, docs and examples take from ``prunekit.torch`` (imports and ``pt.X`` uses)."""
    names: set[str] = set()
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text()
        for block in re.findall(r"```python\n(.*?)```", text, flags=re.S):
            names |= _names_in(block)
    for path in sorted((ROOT / "examples").glob("*.py")):
        names |= _names_in(path.read_text())
    return names


def _names_in(code: str) -> set[str]:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return set()
    aliases = {
        a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names if a.name == "prunekit.torch"
    }
    found = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "prunekit.torch" for a in n.names}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and ast.unparse(node.value) in aliases:
            found.add(node.attr)
    return found


def test_every_name_the_docs_use_is_public() -> None:
    documented = _documented_names()
    assert documented, "the docs and examples should use prunekit.torch"
    missing = sorted(documented - set(pt.__all__))
    assert missing == [], f"documented but not in prunekit.torch.__all__: {missing}"


def test_public_names_resolve() -> None:
    for name in pt.__all__:
        assert getattr(pt, name) is not None, name


@pytest.mark.parametrize("name", ["plan_of", "TaylorImportance", "StructuredResult", "SensitivityTable", "select_parameters"])
def test_a_moved_name_still_works_for_one_release_with_a_warning(name: str) -> None:
    with pytest.warns(DeprecationWarning, match=rf"prunekit\.torch\.{name} moved to (prunekit\.[\w.]+)\.{name}") as caught:
        value = getattr(pt, name)
    home = re.search(r"moved to (prunekit\.[\w.]+)\." + name, str(caught[0].message)).group(1)  # type: ignore[union-attr]
    assert value is getattr(importlib.import_module(home), name)
    assert name not in pt.__all__


def test_an_unknown_name_is_an_attribute_error() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError, match="prunekit.torch.*no attribute 'prune_everything'"):
            pt.prune_everything  # noqa: B018


def test_a_report_function_the_docs_named_before_it_moved_still_imports_from_its_old_module_with_a_warning() -> None:
    from prunekit.sweep.report import sweep_report

    with pytest.warns(DeprecationWarning, match=r"prunekit\.report\.html\.sweep_report moved to prunekit\.sweep\.report"):
        from prunekit.report.html import sweep_report as old
    assert old is sweep_report


def _moved_modules() -> list[tuple[str, str]]:
    """``(old path, new path)`` of every shim: a module whose body is ``alias_module(__name__, "new")``."""
    from tests.architecture.import_graph import PACKAGE, is_shim, module_name

    moved = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if is_shim(tree):
            call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func) == "alias_module")
            moved.append((module_name(path), call.args[1].value))  # type: ignore[attr-defined]
    return moved


@pytest.mark.parametrize(("old", "new"), _moved_modules(), ids=lambda path: path)
def test_a_moved_module_imports_from_its_old_path_for_one_release_with_a_warning(old: str, new: str) -> None:
    import sys

    sys.modules.pop(old, None)  # an earlier import would hide the warning
    with pytest.warns(DeprecationWarning, match=rf"{re.escape(old)} moved to {re.escape(new)}"):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)
