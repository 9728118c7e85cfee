"""The architecture as a test: packages import only downward, and nothing imports in a cycle."""

from __future__ import annotations

import pytest

from tests.architecture.import_graph import import_graph, package_of

# bottom to top; a package may import only from its own layer or the layers below it
LAYERS = [
    {"errors"},
    {"core"},
    {"prunekit", "schedules", "masks", "data", "dynamic"},  # "prunekit": the root package, which re-exports the vocabulary
    {"report"},
    {"methods"},
    {"artifacts", "tradeoffs"},
    {"torch", "keras"},
    {"llm"},
    {"serve"},
    {"recipes", "sweep", "demo"},
    {"commands", "cli"},
]
LEVEL = {package: level for level, packages in enumerate(LAYERS) for package in packages}
MIRRORS = {("torch", "keras"), ("keras", "torch")}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_package_has_a_layer():
    unknown = sorted({package_of(m) for m in import_graph()} - set(LEVEL))
    assert not unknown, f"add {unknown} to LAYERS in {__file__} (and to the README's architecture)"


def test_packages_import_only_downward():
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        for target in targets
        if LEVEL.get(package_of(target), -1) > LEVEL.get(package_of(module), -1)
        or (package_of(module), package_of(target)) in MIRRORS
    )
    assert upward == []


@pytest.mark.parametrize("level", ["package", "module"])
def test_no_import_cycles(level):
    graph = import_graph()
    if level == "package":
        packages: dict[str, set[str]] = {}
        for module, targets in graph.items():
            packages.setdefault(package_of(module), set()).update(
                package_of(t) for t in targets if package_of(t) != package_of(module)
            )
        graph = packages
    assert _cycles(graph) == []


def test_the_layering_check_catches_an_upward_import():
    graph = {"prunekit.core.atomic": {"prunekit.torch.training"}}
    assert LEVEL[package_of("prunekit.torch.training")] > LEVEL[package_of("prunekit.core.atomic")]
    assert _cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b"]]
    assert graph  # the graph above is what test_packages_import_only_downward would reject
