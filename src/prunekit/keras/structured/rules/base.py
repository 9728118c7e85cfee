"""The public rule hook for Keras structured pruning: how a layer's channels flow and how to shrink it.

The twin of :mod:`prunekit.torch.structured.rules.base`. A :class:`ChannelRule` describes one layer
class in two steps:

* ``couple(layer, ctx)`` runs while the model is traced. ``ctx`` (:class:`Coupling`) hands out
  *label arrays*, one integer per channel position, for the channel (last) axis of the layer's
  tensor inputs (``ctx.input(0)``, ``ctx.input("query")``) and for every dimension of its weights
  (``ctx.weight("kernel")``, dotted for sublayers: ``"cell.kernel"``); the rule relates them:
  ``tie`` (the same channels), ``pass_through`` (the output carries an input's channels),
  ``produce`` (a weight dimension makes new channels), ``fix`` (never removed), then ``set_output``.
* ``shrink(layer, ctx)`` runs when the smaller model is built: the engine has already sliced every
  weight dimension the rule labelled; the rule returns the config fields to set
  (``{"units": ctx.shape("kernel")[-1]}``, dotted for nested configs) so that ``from_config``
  builds a layer of the new size.

Rules are passed per call, ``prune_channels(model, ratio=0.5, rules={MyLayer: MyRule()})``; a
user's rule for a class, or a parent class, takes precedence over the built-in ones
(:mod:`prunekit.keras.structured.rules.layers`), which are written against this same interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from prunekit.core.rule_maps import check_rule_map, rule_for
from prunekit.errors import ConfigError


class RuleError(ConfigError):
    """A channel rule did something inconsistent with the traced model (names the rule and layer)."""


def describe(layer: Any) -> str:
    """``"Dense layer 'fc1'"``: how messages name a layer."""
    return f"{type(layer).__name__} layer {layer.name!r}"


def resolve(layer: Any, dotted: str) -> Any:
    """The attribute ``dotted`` (``"kernel"``, ``"cell.kernel"``) of ``layer``, or ``None``."""
    owner = layer
    for part in dotted.split("."):
        owner = getattr(owner, part, None)
    return owner


class Coupling:
    """What a rule sees while the model is traced: channel labels and the verbs that relate them."""

    def __init__(self, graph: Any, node: Any, rule: ChannelRule):
        """``graph`` is the :class:`~prunekit.keras.structured.graph.ChannelGraph` being traced, ``node``
        the call (typed loosely: the graph module imports the rules, not the other way round)."""
        self.layer = node.layer
        self.name: str = node.layer.name
        self.config: dict[str, Any] = node.layer.get_config()
        self._graph = graph
        self._node = node
        self._rule = rule
        self._read: set[str] = set()
        self._output_set = False
        self.reason: str | None = None

    # -- reading ---------------------------------------------------------------------------

    @property
    def num_inputs(self) -> int:
        """Number of tensors the layer was called with."""
        return len(self._node.inputs)

    def has_input(self, name: str) -> bool:
        """Whether the call argument ``name`` is a traced tensor."""
        value = self._node.arguments.get(name)
        return isinstance(value, str) and value in self._graph.maps

    def input(self, index: int | str = 0) -> np.ndarray:
        """Labels of the channel axis of a tensor input: a position in call order or an argument name."""
        tid = self._tid(index)
        self._read.add(tid)
        return self._graph.maps[tid].copy()

    def input_shape(self, index: int | str = 0) -> tuple:
        """Shape of a tensor input as traced (``None`` for the batch)."""
        return tuple(self._graph.shapes[self._tid(index)])

    def output_shape(self) -> tuple:
        """Shape of the layer's output as traced."""
        return tuple(self._graph.shapes[self._node.output])

    def argument(self, name: str, default: Any = None) -> Any:
        """A non-tensor call argument (``return_attention_scores``...), or ``default``."""
        return self._node.arguments.get(name, default)

    def weight(self, name: str) -> list[np.ndarray]:
        """Labels of every dimension of the layer's weight ``name`` (dotted for sublayers)."""
        labels = self._graph.weight_labels.setdefault(self.name, {})
        if name not in labels:
            variable = resolve(self.layer, name)
            if variable is None or not any(variable is w for w in self.layer.weights):
                raise self.error(f"it has no weight {name!r}")
            labels[name] = [self._graph.new_atoms(f"{self.name}.{name}", int(size)) for size in variable.shape]
        return list(labels[name])

    def has_weight(self, name: str) -> bool:
        """Whether the layer has a weight ``name`` (``bias`` is absent with ``use_bias=False``)."""
        variable = resolve(self.layer, name)
        return variable is not None and any(variable is w for w in self.layer.weights)

    # -- relating --------------------------------------------------------------------------

    def tie(self, a: np.ndarray, b: np.ndarray) -> None:
        """Positions ``a[i]`` and ``b[i]`` hold the same channel (removed together)."""
        a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
        if a.size != b.size:
            raise self.error(f"tie() got label arrays of {a.size} and {b.size} positions; they must be equally long")
        for x, y in zip(a.tolist(), b.tolist()):
            self._graph.union(x, y)

    def fix(self, a: np.ndarray, reason: str | None = None) -> None:
        """These channels are never removed; ``reason`` (default: they feed this layer) says why."""
        self._graph.lock(np.asarray(a, np.int64), reason or f"it feeds {describe(self.layer)}, whose rule fixes it")

    def produce(self, weight: str, dim: int) -> np.ndarray:
        """Dimension ``dim`` of ``weight`` makes the layer's new output channels; returns their labels."""
        return self._produce(weight, dim, "channels")

    def produce_heads(self, weight: str, dim: int) -> np.ndarray:
        """Dimension ``dim`` of ``weight`` holds the layer's attention heads (removed whole); returns their labels."""
        return self._produce(weight, dim, "heads")

    def set_output(self, labels: np.ndarray) -> None:
        """The channels the output's channel axis carries, one label per position."""
        labels = np.asarray(labels, np.int64).reshape(-1)
        width = self.output_shape()[-1]
        if width is not None and labels.size != width:
            raise self.error(f"set_output() got {labels.size} labels, but the output has {width} channels")
        self._graph.maps[self._node.output] = labels
        self._output_set = True

    def pass_through(self, index: int | str = 0) -> None:
        """The output carries exactly the channels of input ``index``."""
        self.set_output(self.input(index))

    def keep_output(self) -> None:
        """The output carries new channels that are never removed."""
        self.set_output(self._graph.new_atoms(self.name, self._width(), lock=f"it comes out of {describe(self.layer)}"))

    def opaque(self, why: str) -> None:
        """Channels cannot flow through this call: every input and output channel stays, because
        ``it feeds <layer>, <why>``."""
        self.reason = f"it feeds {describe(self.layer)}, {why}"

    def error(self, message: str) -> RuleError:
        """A :class:`RuleError` naming this rule and layer."""
        return RuleError(f"rule {type(self._rule).__name__} for {describe(self.layer)}: {message}")

    # -- internal --------------------------------------------------------------------------

    def _tid(self, index: int | str) -> str:
        if isinstance(index, str):
            tid = self._node.arguments.get(index)
            if not self.has_input(index):
                raise self.error(f"call argument {index!r} is not a traced tensor")
            return str(tid)
        if not -len(self._node.inputs) <= index < len(self._node.inputs):
            raise self.error(f"input {index} does not exist; the layer was called with {len(self._node.inputs)} tensor(s)")
        return self._node.inputs[index]

    def _width(self) -> int:
        width = self.output_shape()[-1]
        return int(width) if width is not None else 0

    def _produce(self, weight: str, dim: int, kind: str) -> np.ndarray:
        labels = self.weight(weight)
        if not -len(labels) <= dim < len(labels):
            raise self.error(f"weight {weight!r} has {len(labels)} dimension(s); dimension {dim} does not exist")
        fresh = self._graph.new_atoms(self.name, len(labels[dim]))
        self.tie(labels[dim], fresh)
        self._graph.produced.setdefault(self.name, {})[kind] = (weight, dim % len(labels))
        if kind == "heads":
            self._graph.heads[self.name] = fresh
        return fresh

    def _finish(self) -> None:
        """Lock the inputs the rule never read; check the output was described."""
        if self.reason is not None:
            return
        if not self._output_set:
            raise self.error(
                "couple() did not describe the output; call ctx.set_output(labels), ctx.pass_through(i) or ctx.keep_output()"
            )
        for tid in self._node.inputs:
            if tid not in self._read:
                self._graph.lock(self._graph.maps[tid], f"it feeds {describe(self.layer)} as an input its rule does not read")


class Shrink:
    """What a rule sees when the smaller model is built: the new sizes after the chosen channels go."""

    def __init__(self, graph: Any, node: Any, keep: Mapping[str, np.ndarray]):
        """``keep`` maps each tensor id to the mask of its surviving channels."""
        self.layer = node.layer
        self.name: str = node.layer.name
        self.config: dict[str, Any] = node.layer.get_config()
        self._graph = graph
        self._node = node
        self._keep = keep

    def kept(self, weight: str, dim: int) -> list[int]:
        """Surviving positions of dimension ``dim`` of ``weight`` (all of them if the rule left it alone)."""
        labels = self._graph.weight_labels.get(self.name, {}).get(weight)
        variable = resolve(self.layer, weight)
        if labels is None:
            if variable is None:
                raise ConfigError(f"{describe(self.layer)} has no weight {weight!r}")
            return list(range(int(variable.shape[dim])))
        return [int(i) for i in np.flatnonzero(self._graph.kept(labels[dim]))]

    def shape(self, weight: str) -> tuple[int, ...]:
        """New shape of the layer's weight ``weight``."""
        variable = resolve(self.layer, weight)
        if variable is None:
            raise ConfigError(f"{describe(self.layer)} has no weight {weight!r}")
        return tuple(len(self.kept(weight, dim)) for dim in range(len(variable.shape)))

    def input_width(self, index: int | str = 0) -> int:
        """New number of channels of a tensor input (a position in call order or an argument name)."""
        tid = self._node.arguments.get(index) if isinstance(index, str) else self._node.inputs[index]
        return int(self._keep[tid].sum())

    def output_width(self) -> int:
        """New number of channels of the layer's output."""
        return int(self._keep[self._node.output].sum())


class ChannelRule(ABC):
    """How one Keras layer class's channels flow (``couple``) and how to shrink it (``shrink``).

    Subclass it for a custom layer and pass an instance per call:
    ``prune_channels(model, ratio=0.5, rules={ChannelScale: ChannelScaleRule()})``. Example (a
    learned per-channel scale over the last axis)::

        class ChannelScaleRule(ChannelRule):
            def couple(self, layer, ctx):
                ctx.tie(ctx.input(0), ctx.weight("scale")[0])
                ctx.pass_through(0)
    """

    @abstractmethod
    def couple(self, layer: Any, ctx: Coupling) -> None:
        """Relate the layer's input, weight and output channels through ``ctx``."""

    def shrink(self, layer: Any, ctx: Shrink) -> dict[str, Any]:
        """Config fields to set (dotted for nested configs) once the weights shrink; none by default."""
        return {}

    def filters(self, layer: Any, kind: str) -> np.ndarray | None:
        """Rows ``(channels, fan_in)`` that ``"l1"``/``"l2"`` importance ranks for the ``kind``
        (``"channels"`` or ``"heads"``) the layer produces; ``None``: the produced weight's slices."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


RuleMap = Mapping[type, ChannelRule]


def check_rules(rules: Any) -> dict[type, ChannelRule]:
    """Validate a ``rules=`` argument: a mapping from Keras layer classes to :class:`ChannelRule` objects."""
    return check_rule_map(
        rules,
        layer_base=keras.layers.Layer,
        layer_label="a keras.layers.Layer",
        rule_type=ChannelRule,
        package="prunekit.keras.structured.rules",
    )


def default_filters(layer: Any, weight: str, dim: int) -> np.ndarray:
    """The produced weight's slices along ``dim``, one row per channel."""
    values = np.asarray(resolve(layer, weight).numpy())
    return np.moveaxis(values, dim, 0).reshape(values.shape[dim], -1)


__all__ = ["ChannelRule", "Coupling", "RuleError", "RuleMap", "Shrink", "check_rules", "describe", "rule_for"]
