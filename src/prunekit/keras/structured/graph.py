"""Channel dependencies of a Sequential or Functional Keras model, traced from its config.

Every output channel of a *producer* (Dense, Conv1D/2D/3D, SeparableConv1D/2D, MultiHeadAttention's
output projection) is an "atom".
Each tensor in the graph carries a map from its channel positions to atoms: per-channel layers
(BatchNormalization, activations, pooling, DepthwiseConv) pass it on, Flatten tiles it over the
spatial positions, Concatenate joins maps, and element-wise merges (Add, Multiply, ...) *couple*
atoms, which must then be removed together (a union-find). Atoms that reach a model output or
any layer this analysis does not know are locked: removing them would change the model's
interface or a computation prunekit cannot rewrite. LayerNormalization locks the channels it
normalises (its mean and variance mix them). Each head of a MultiHeadAttention is an atom of its
own: heads are removed whole, and the attention's query/key/value inputs are read like a Dense's.
An LSTM/GRU/SimpleRNN produces ``units`` atoms (its hidden units, whether or not it returns sequences)
and reads its input features like a Dense; with ``return_state`` or ``stateful`` it locks them. A
Bidirectional wrapping one produces one atom per unit ``j`` of both directions (Keras needs equal
forward and backward units): at ``j`` and ``units + j`` with ``merge_mode="concat"``, at ``j`` otherwise.
An Embedding produces ``output_dim`` atoms (columns of its table).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from prunekit.errors import ConfigError

L = keras.layers
PRODUCERS = (L.Dense, L.Conv1D, L.Conv2D, L.Conv3D, L.SeparableConv1D, L.SeparableConv2D)
RECURRENT = (L.LSTM, L.GRU, L.SimpleRNN)
DEPTHWISE = (L.DepthwiseConv1D, L.DepthwiseConv2D)
PER_CHANNEL = (
    L.ReLU,
    L.LeakyReLU,
    L.ELU,
    L.Dropout,
    L.SpatialDropout1D,
    L.SpatialDropout2D,
    L.SpatialDropout3D,
    L.GaussianNoise,
    L.GaussianDropout,
    L.AlphaDropout,
    L.ActivityRegularization,
    L.Identity,
    L.MaxPooling1D,
    L.MaxPooling2D,
    L.MaxPooling3D,
    L.AveragePooling1D,
    L.AveragePooling2D,
    L.AveragePooling3D,
    L.GlobalAveragePooling1D,
    L.GlobalAveragePooling2D,
    L.GlobalAveragePooling3D,
    L.GlobalMaxPooling1D,
    L.GlobalMaxPooling2D,
    L.GlobalMaxPooling3D,
    L.ZeroPadding1D,
    L.ZeroPadding2D,
    L.ZeroPadding3D,
    L.Cropping1D,
    L.Cropping2D,
    L.Cropping3D,
    L.UpSampling1D,
    L.UpSampling2D,
    L.UpSampling3D,
)
ELEMENTWISE = (L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum)
CHANNEL_MIXING_ACTIVATIONS = ("softmax", "log_softmax")
ATTENTION_INPUTS = ("query", "value", "key")


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
        """Nodes of layers whose output channels can be removed (single call, channels_last, groups=1),
        traced attention layers included."""
        return (
            node
            for node in self.nodes
            if not node.shared
            and (
                getattr(node.layer, "name", None) in self.heads
                or isinstance(node.layer, PRODUCERS)
                and _traceable(node.layer)
                or isinstance(node.layer, RECURRENT + (L.Bidirectional, L.Embedding))
            )
        )

    def attention_nodes(self) -> dict[str, Node]:
        """The MultiHeadAttention calls whose heads can be removed, by layer name."""
        return {node.layer.name: node for node in self.nodes if getattr(node.layer, "name", None) in self.heads}


def _traceable(layer: Any) -> bool:
    config = layer.get_config()
    if config.get("data_format", "channels_last") != "channels_last":
        return False
    return config.get("groups", 1) == 1


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
        nodes.append(Node(layer, [previous], layer.name))
        shapes[layer.name] = shape
        previous = layer.name
    return nodes, shapes, [previous]


def trace(model: Any) -> ChannelGraph:
    """The channel graph of a built Sequential or Functional ``model``.

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
    for node in nodes:
        _propagate(graph, node)
    for tid in outputs:
        if tid in graph.maps:
            graph.lock(graph.maps[tid], f"it reaches the model output {tid.split(':')[0]!r}")
    return graph


def _channels(graph: ChannelGraph, tid: str) -> int:
    shape = graph.shapes.get(tid)
    return int(shape[-1]) if shape and shape[-1] is not None else 0


def _propagate(graph: ChannelGraph, node: Node) -> None:
    layer, maps = node.layer, graph.maps
    name = "input" if layer is None else layer.name
    inputs = [maps[tid] for tid in node.inputs if tid in maps]
    if layer is None or isinstance(layer, L.InputLayer):
        maps[node.output] = graph.new_atoms(name, _channels(graph, node.output), lock="it is a model input")
        return
    reason = _opaque_reason(graph, node)
    if reason is not None:
        for atoms in inputs:
            graph.lock(atoms, reason)
        maps[node.output] = graph.new_atoms(name, _channels(graph, node.output), lock=reason)
        return
    (first, *rest) = inputs
    if isinstance(layer, L.MultiHeadAttention):
        _propagate_attention(graph, node)
    elif isinstance(layer, RECURRENT + (L.Bidirectional,)):
        _propagate_recurrent(graph, node)
    elif isinstance(layer, PRODUCERS):
        config = layer.get_config()
        maps[node.output] = graph.new_atoms(name, int(config["units"] if "units" in config else config["filters"]))
    elif isinstance(layer, L.Embedding):
        graph.lock(first, f"it feeds Embedding layer {name!r} as token ids")
        maps[node.output] = graph.new_atoms(name, int(layer.get_config()["output_dim"]))
    elif isinstance(layer, DEPTHWISE):
        maps[node.output] = np.repeat(first, layer.get_config()["depth_multiplier"])
    elif isinstance(layer, L.Flatten):
        spatial = int(np.prod(graph.shapes[node.inputs[0]][1:-1], dtype=np.int64))
        maps[node.output] = np.tile(first, spatial)
    elif isinstance(layer, L.Concatenate) and _is_channel_axis(layer.get_config()["axis"], graph.shapes[node.inputs[0]]):
        maps[node.output] = np.concatenate(inputs)
    else:  # per-channel layers, BatchNormalization, element-wise merges, Concatenate on another axis
        for other in rest:
            for a, b in zip(first, other):
                graph.union(int(a), int(b))
        maps[node.output] = first


def _propagate_attention(graph: ChannelGraph, node: Node) -> None:
    """Heads and output channels are new atoms; query/key/value channels are read (like a Dense's inputs),
    any other tensor input (a mask) is locked."""
    layer = node.layer
    streams = {node.arguments.get(role) for role in ATTENTION_INPUTS}
    for tid in node.inputs:
        if tid not in streams:
            graph.lock(graph.maps[tid], f"it is a mask of MultiHeadAttention layer {layer.name!r}")
    graph.maps[node.output] = graph.new_atoms(layer.name, _channels(graph, node.output))
    graph.heads[layer.name] = graph.new_atoms(layer.name, layer.num_heads)


def _propagate_recurrent(graph: ChannelGraph, node: Node) -> None:
    """Hidden units are new atoms; the sequence's features are read (like a Dense's inputs), a mask is locked."""
    layer = node.layer
    for tid in node.inputs:
        if tid != node.arguments.get("sequences"):
            graph.lock(graph.maps[tid], f"it is a mask of {type(layer).__name__} layer {layer.name!r}")
    if not isinstance(layer, L.Bidirectional):
        graph.maps[node.output] = graph.new_atoms(layer.name, int(layer.units))
        return
    units = graph.new_atoms(layer.name, int(layer.forward_layer.units))
    graph.maps[node.output] = np.tile(units, 2 if layer.merge_mode == "concat" else 1)


def _is_channel_axis(axis: int, shape: tuple) -> bool:
    return axis == -1 or axis == len(shape) - 1


def _opaque_reason(graph: ChannelGraph, node: Node) -> str | None:
    """Why channels cannot flow through ``node`` (so they are locked), or ``None`` when they can."""
    layer = node.layer
    kind = f"{type(layer).__name__} layer {layer.name!r}"
    if node.shared:
        return f"it feeds the shared layer {layer.name!r} (called more than once)"
    if len(node.inputs) == 0 or any(tid not in graph.maps for tid in node.inputs):
        return f"it feeds {kind}, whose inputs are not traced"
    if isinstance(layer, L.MultiHeadAttention):
        return _attention_reason(node, kind)
    if isinstance(layer, L.LayerNormalization):
        return f"it feeds {kind}, whose mean and variance mix the channels it normalises"
    if isinstance(layer, RECURRENT):
        return _recurrent_reason(node, kind)
    if isinstance(layer, L.Bidirectional):
        return _bidirectional_reason(node, kind)
    if isinstance(layer, PRODUCERS + DEPTHWISE) and not _traceable(layer):
        return f"it feeds {kind} (channels_first or grouped convolutions are not rewritten)"
    if isinstance(layer, PRODUCERS + DEPTHWISE + PER_CHANNEL + (L.Flatten, L.Embedding)):
        return None if len(node.inputs) == 1 else f"it feeds {kind} with several inputs"
    if isinstance(layer, L.Activation):
        activation = layer.get_config().get("activation")
        return f"it feeds {kind}, whose {activation} mixes channels" if activation in CHANNEL_MIXING_ACTIVATIONS else None
    if isinstance(layer, L.BatchNormalization):
        axis = layer.get_config()["axis"]
        axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
        shape = graph.shapes[node.inputs[0]]
        return None if isinstance(axis, int) and _is_channel_axis(axis, shape) else f"it feeds {kind} on a non-channel axis"
    if isinstance(layer, ELEMENTWISE + (L.Concatenate,)):
        sizes = {len(graph.maps[tid]) for tid in node.inputs}
        if isinstance(layer, L.Concatenate) and _is_channel_axis(layer.get_config()["axis"], graph.shapes[node.inputs[0]]):
            return None
        return None if len(sizes) == 1 else f"it feeds {kind}, which broadcasts inputs of different widths"
    return f"it feeds {kind}, which structured pruning does not rewrite"


def _attention_reason(node: Node, kind: str) -> str | None:
    """Why a MultiHeadAttention call cannot be rewritten, or ``None`` when its heads and channels can be removed."""
    if type(node.layer) is not L.MultiHeadAttention:
        return f"it feeds {kind}, a MultiHeadAttention subclass whose call structured pruning does not know"
    if "query" not in node.arguments or "value" not in node.arguments:
        return f"it feeds {kind}, whose query and value inputs are not traced"
    if node.arguments.get("return_attention_scores"):
        return f"it feeds {kind}, whose attention scores (one slice per head) are a model tensor"
    output_shape = node.layer.get_config()["output_shape"]
    if isinstance(output_shape, (list, tuple)) and len(output_shape) != 1:
        return f"it feeds {kind}, whose output_shape {tuple(output_shape)} has more than one dimension"
    return None


def _recurrent_reason(node: Node, kind: str) -> str | None:
    """Why an LSTM/GRU/SimpleRNN call cannot be rewritten, or ``None`` when its hidden units can be removed."""
    config = node.layer.get_config()
    if type(node.layer) not in RECURRENT:
        return f"it feeds {kind}, a recurrent subclass whose cell structured pruning does not know"
    if config.get("return_state"):
        return f"it feeds {kind}, whose states are model tensors (build it with return_state=False to prune it)"
    if config.get("stateful"):
        return f"it feeds {kind}, which keeps its states between batches (build it with stateful=False to prune it)"
    if set(node.inputs) - {node.arguments.get("sequences"), node.arguments.get("mask")}:
        return f"it feeds {kind} with an initial state (its shape follows the units)"
    return None


def _bidirectional_reason(node: Node, kind: str) -> str | None:
    """Why a Bidirectional call cannot be rewritten, or ``None`` when its two layers' units can be removed."""
    layer = node.layer
    forward, backward = layer.forward_layer, layer.backward_layer
    if type(forward) not in RECURRENT or type(backward) not in RECURRENT:
        return f"it feeds {kind}, which wraps {type(forward).__name__}, not an LSTM, GRU or SimpleRNN"
    if layer.merge_mode is None:
        return f"it feeds {kind}, whose merge_mode=None returns two tensors (use 'concat' to prune it)"
    if forward.units != backward.units:
        return f"it feeds {kind}, whose forward and backward layers have different units"
    return _recurrent_reason(Node(forward, node.inputs, node.output, arguments=node.arguments), kind)
