"""The import graph of ``src/prunekit``, read with ``ast`` (no module is imported)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "prunekit"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_shim(tree: ast.Module) -> bool:
    """A moved module's old path: besides its docstring, only ``from prunekit.core.moved import alias_module``
    and the ``alias_module(...)`` call (a module that merely uses ``moved_names`` is still checked)."""
    body = [node for node in tree.body if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))]
    return (
        len(body) == 2
        and isinstance(body[0], ast.ImportFrom)
        and body[0].module == "prunekit.core.moved"
        and isinstance(body[1], ast.Expr)
        and isinstance(body[1].value, ast.Call)
        and ast.unparse(body[1].value.func) == "alias_module"
    )


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    """``{module: {prunekit modules it imports, at any depth of its code}}``, shims left out."""
    known = {module_name(p) for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if is_shim(tree):
            continue
        module = module_name(path)
        targets: set[str] = set()
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, node, path.name == "__init__.py")
                names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
            for name in names:
                if name == "prunekit" or name.startswith("prunekit."):
                    while name not in known and "." in name:
                        name = name.rsplit(".", 1)[0]
                    if name != module:
                        targets.add(name)
        graph[module] = targets
    return graph


def package_of(module: str) -> str:
    """The top-level part of prunekit a module belongs to (``prunekit.torch.llm.x`` -> ``torch``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "prunekit"
