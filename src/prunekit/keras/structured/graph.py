"""Channel dependencies of a Sequential or Functional Keras model, traced from its config.

Every output channel a layer's rule *produces* (a Dense's units, a Conv's filters, an Embedding's
columns, an RNN's hidden units, a MultiHeadAttention's heads and output channels) is an "atom";
so is every position of every weight a rule labels. Each tensor in the graph carries a map from
its channel (last-axis) positions to atoms. For each call, the layer's
:class:`~prunekit.keras.structured.rules.ChannelRule` (the user's ``rules=`` first, then the
built-in rules) says how atoms flow: per-channel layers pass them on, Flatten tiles them over the
spatial positions, Concatenate joins maps, element-wise merges *tie* atoms, which must then be
removed together (a union-find), and weights are tied to the channels they read or make.
Atoms that reach a model output, a shared layer or a layer without a rule are locked: removing
them would change the model's interface or a computation prunekit cannot rewrite.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from prunekit.errors import ConfigError
from prunekit.keras.structured.rules import BUILTIN_RULES
from prunekit.keras.structured.rules.base import (
    ChannelRule,
    Coupling,
    RuleError,
    RuleMap,
    check_rules,
    default_filters,
    describe,
    rule_for,
)

L = keras.layers


@dataclass
class Node:
    """One call of a layer: its input tensor ids (in call order), output tensor id, and its top-level
    call arguments by parameter name (tensor ids for tensors, e.g. ``{"query": ..., "value": ...}``)."""

    layer: Any
    inputs: list[str]
    output: str
    shared: bool = False
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass
class ChannelGraph:
    """The traced model: nodes in topological order, tensor shapes, and the channel maps."""

    nodes: list[Node]
    shapes: dict[str, tuple]
    outputs: list[str]
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    atom_producer: list[str] = field(default_factory=list)
    atom_index: list[int] = field(default_factory=list)
    parent: list[int] = field(default_factory=list)
    lock_reason: dict[int, str] = field(default_factory=dict)
    heads: dict[str, np.ndarray] = field(default_factory=dict)
    weight_labels: dict[str, dict[str, list[np.ndarray]]] = field(default_factory=dict)
    produced: dict[str, dict[str, tuple[str, int]]] = field(default_factory=dict)
    rules: dict[str, ChannelRule] = field(default_factory=dict)
    pruned: set[int] = field(default_factory=set)
    opaque: dict[str, str] = field(default_factory=dict)

    # -- union-find over atoms -------------------------------------------------------------
    def new_atoms(self, producer: str, count: int, lock: str | None = None) -> np.ndarray:
        """``count`` fresh atoms (output channels of ``producer``), locked with ``lock`` as reason if given."""
        start = len(self.parent)
        self.parent.extend(range(start, start + count))
        self.atom_producer.extend([producer] * count)
        self.atom_index.extend(range(count))
        atoms = np.arange(start, start + count)
        if lock is not None:
            self.lock(atoms, lock)
        return atoms

    def find(self, atom: int) -> int:
        """The representative of ``atom``'s class (with path compression)."""
        root = atom
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[atom] != root:
            self.parent[atom], atom = root, self.parent[atom]
        return root

    def roots(self, atoms: np.ndarray) -> np.ndarray:
        """The representative of each atom."""
        return np.array([self.find(int(a)) for a in atoms], dtype=np.int64)

    def union(self, a: int, b: int) -> None:
        """Couple two atoms: they are removed together; a lock on either locks both."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        reason = self.lock_reason.pop(rb, None) or self.lock_reason.get(ra)
        self.parent[rb] = ra
        if reason is not None:
            self.lock_reason[ra] = reason

    def lock(self, atoms: np.ndarray, reason: str) -> None:
        """Mark the atoms' classes as not removable, keeping the first reason given."""
        for atom in atoms:
            self.lock_reason.setdefault(self.find(int(atom)), reason)

    def locked(self, root: int) -> str | None:
        """Why the class of ``root`` cannot be removed, or ``None``."""
        return self.lock_reason.get(self.find(root))

    def producer_nodes(self) -> Iterator[Node]:
        """Nodes of layers whose rule produced output channels (single call, traced inputs)."""
        return (node for node in self.nodes if "channels" in self.produced.get(getattr(node.layer, "name", ""), {}))

    def kept(self, atoms: np.ndarray) -> np.ndarray:
        """Which of ``atoms`` survive the removal of the classes in ``pruned``."""
        return ~np.isin(self.roots(atoms), list(self.pruned))

    def filters(self, layer: Any, kind: str = "channels") -> np.ndarray:
        """The rows (one per channel or head of ``kind``) that norm importance ranks, from ``layer``'s rule."""
        rows = self.rules[layer.name].filters(layer, kind)
        return rows if rows is not None else default_filters(layer, *self.produced[layer.name][kind])


def _tensors(structure: Any) -> Iterator[dict]:
    if isinstance(structure, dict):
        if structure.get("class_name") == "__keras_tensor__":
            yield structure["config"]
            return
        for value in structure.values():
            yield from _tensors(value)
    elif isinstance(structure, (list, tuple)):
        for value in structure:
            yield from _tensors(value)


def _tensor_id(history: list) -> str:
    return f"{history[0]}:{history[1]}:{history[2]}"


def _functional_nodes(model: Any) -> tuple[list[Node], dict[str, tuple], list[str]]:
    config = model.get_config()
    operations = {operation.name: operation for operation in model.operations}  # layers and ops (a mask's NotEqual)
    nodes: list[Node] = []
    shapes: dict[str, tuple] = {}
    for entry in config["layers"]:
        layer = operations[entry["name"]]
        inbound = entry.get("inbound_nodes", [])
        if not inbound:
            shape = tuple(layer.output.shape)
            out = f"{entry['name']}:0:0"
            shapes[out] = shape
            nodes.append(Node(layer, [], out))
            continue
        for index, call in enumerate(inbound):
            inputs = []
            for tensor in _tensors(call):
                tid = _tensor_id(tensor["keras_history"])
                shapes[tid] = tuple(tensor["shape"])
                inputs.append(tid)
            nodes.append(
                Node(layer, inputs, f"{entry['name']}:{index}:0", shared=len(inbound) > 1, arguments=_arguments(layer, call))
            )
    outputs = [_tensor_id(history) for history in _output_histories(config["output_layers"])]
    for tid, tensor in zip(outputs, model.outputs):
        shapes.setdefault(tid, tuple(tensor.shape))
    return nodes, shapes, outputs


def _arguments(layer: Any, call: Any) -> dict[str, Any]:
    if not isinstance(call, dict):
        return {}
    names = list(inspect.signature(layer.call).parameters)
    arguments = {}
    for name, value in [*zip(names, call.get("args", [])), *call.get("kwargs", {}).items()]:
        is_tensor = isinstance(value, dict) and value.get("class_name") == "__keras_tensor__"
        arguments[name] = _tensor_id(value["config"]["keras_history"]) if is_tensor else value
    return arguments


def _output_histories(output_layers: Any) -> list[list]:
    if output_layers and isinstance(output_layers[0], str):
        return [output_layers]
    found: list[list] = []
    for item in output_layers:
        if isinstance(item, (list, tuple)) and item and isinstance(item[0], str):
            found.append(list(item))
        elif isinstance(item, (list, tuple, dict)):
            found.extend(_output_histories(list(item.values()) if isinstance(item, dict) else item))
    return found


def _sequential_nodes(model: Any) -> tuple[list[Node], dict[str, tuple], list[str]]:
    if not model.inputs:
        raise ConfigError(f"Sequential model {model.name!r} has no input shape; start it with keras.Input(...)")
    shape = tuple(model.inputs[0].shape)
    nodes = [Node(None, [], "input")]
    shapes = {"input": shape}
    previous = "input"
    for layer in model.layers:
        shape = tuple(layer.compute_output_shape(shape))
        first = next(iter(inspect.signature(layer.call).parameters), "inputs")
        nodes.append(Node(layer, [previous], layer.name, arguments={first: previous}))
        shapes[layer.name] = shape
        previous = layer.name
    return nodes, shapes, [previous]


def trace(model: Any, rules: RuleMap | None = None) -> ChannelGraph:
    """The channel graph of a built Sequential or Functional ``model``; ``rules`` (``{LayerClass:
    ChannelRule()}``) describe custom layers and take precedence over the built-in rules.

    Example::

        graph = trace(digits_cnn())
        [node.layer.name for node in graph.producer_nodes()]  # ['conv1', 'conv2', 'fc1', 'fc2']
    """
    from keras.src.models.functional import Functional

    if isinstance(model, keras.Sequential):
        nodes, shapes, outputs = _sequential_nodes(model)
    elif isinstance(model, Functional):
        nodes, shapes, outputs = _functional_nodes(model)
    else:
        raise ConfigError(
            f"structured pruning rebuilds a model from its config, so it needs a Sequential or Functional model; "
            f"{model.name!r} is a subclassed {type(model).__name__}. Build it with the Functional API "
            "(keras.Model(inputs, outputs)) to prune its channels"
        )
    graph = ChannelGraph(nodes, shapes, outputs)
    checked = check_rules(rules)
    for node in nodes:
        _propagate(graph, node, checked)
    for tid in outputs:
        if tid in graph.maps:
            graph.lock(graph.maps[tid], f"it reaches the model output {tid.split(':')[0]!r}")
    return graph


def _channels(graph: ChannelGraph, tid: str) -> int:
    shape = graph.shapes.get(tid)
    return int(shape[-1]) if shape and shape[-1] is not None else 0


def _propagate(graph: ChannelGraph, node: Node, rules: RuleMap) -> None:
    layer = node.layer
    if layer is None or isinstance(layer, L.InputLayer):
        name = "input" if layer is None else layer.name
        graph.maps[node.output] = graph.new_atoms(name, _channels(graph, node.output), lock="it is a model input")
        return
    kind = describe(layer)
    rule = rule_for(layer, rules, BUILTIN_RULES)
    if node.shared:
        reason: str | None = f"it feeds the shared layer {layer.name!r} (called more than once)"
    elif not node.inputs or any(tid not in graph.maps for tid in node.inputs):
        reason = f"it feeds {kind}, whose inputs are not traced"
    elif rule is None:
        reason = (
            f"it feeds {kind}, which structured pruning does not rewrite; "
            f"describe its channels with rules={{{type(layer).__name__}: ChannelRule()}}"
        )
    else:
        reason = _couple(graph, node, rule)
    if reason is not None:
        graph.opaque.setdefault(layer.name, reason)
        for tid in node.inputs:
            if tid in graph.maps:
                graph.lock(graph.maps[tid], reason)
        graph.maps[node.output] = graph.new_atoms(layer.name, _channels(graph, node.output), lock=reason)


def _couple(graph: ChannelGraph, node: Node, rule: ChannelRule) -> str | None:
    """Run ``rule.couple`` on the call; returns why the call is opaque, or ``None`` when channels flow."""
    ctx = Coupling(graph, node, rule)
    try:
        rule.couple(node.layer, ctx)
    except RuleError:
        raise
    except Exception as exc:
        raise ctx.error(f"couple() raised {type(exc).__name__}: {exc}") from exc
    if ctx.reason is not None:
        graph.produced.pop(node.layer.name, None)
        graph.heads.pop(node.layer.name, None)
        graph.weight_labels.pop(node.layer.name, None)
        return ctx.reason
    ctx._finish()
    graph.rules[node.layer.name] = rule
    return None
