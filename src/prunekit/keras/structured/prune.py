"""Structured pruning for Keras 3: remove whole filters, neurons, recurrent hidden units and attention
heads, returning a physically smaller model.

The model is traced (:mod:`prunekit.keras.structured.graph`), the channels to remove are chosen per
:class:`ChannelGroup` (producers coupled by Add/Multiply are pruned together; the heads of a
MultiHeadAttention are a group of their own), then the model is rebuilt from its config with fewer
``filters``/``units``/``output_dim``/``num_heads`` and the kept weights are copied: producers lose
output channels (an LSTM/GRU/SimpleRNN hidden unit ``j``, in both directions of a Bidirectional,
takes its column ``g*units + j`` of every gate ``g`` in ``kernel``, ``recurrent_kernel`` and ``bias``,
and its row of ``recurrent_kernel``);
Dense/Conv/SeparableConv/DepthwiseConv/BatchNormalization/RNN and the attention's query/key/value
projections lose the matching inputs (through Flatten, Concatenate and global pooling). Layer names,
classes and the output shape stay the same.
"""

from __future__ import annotations

import copy
import fnmatch
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import keras
import numpy as np

from prunekit.core.structured import GroupRecord, LayerRecord, StructuredReport, StructuredResult
from prunekit.errors import ConfigError, LayerNotFoundError
from prunekit.keras.measure.summary import summarize
from prunekit.keras.structured.graph import ChannelGraph, trace
from prunekit.keras.structured.rules.base import RuleError, RuleMap, Shrink, describe, resolve

L = keras.layers
REMOVABLE = {
    "channel": "Dense, Conv1D/2D/3D, SeparableConv1D/2D, Embedding, LSTM/GRU/SimpleRNN (or Bidirectional) or "
    "MultiHeadAttention; "
    "single call, channels_last, groups=1; or a layer whose rules= entry produces channels",
    "head": "keras.layers.MultiHeadAttention itself (not a subclass or GroupQueryAttention), called once on traced "
    "query and value tensors, without return_attention_scores, with a one-dimensional output_shape",
}


@dataclass(frozen=True)
class ChannelGroup:
    """Output channels removed together: one producer's, or those of producers coupled by a merge.

    ``filters[producer]`` is ``(size, fan_in)``: row ``k`` is that producer's filter (kernel slice)
    for the group's channel ``k``; ``channels[producer][k]`` is its output index. Only removable
    channels are listed; ``locked`` counts the others and ``locked_reason`` says why. A group of
    ``kind`` ``"heads"`` holds one MultiHeadAttention's heads: channel ``k`` is head ``k`` and its row
    joins that head's query, key, value and output-projection kernel slices.
    """

    producers: tuple[str, ...]
    channels: Mapping[str, np.ndarray]
    filters: Mapping[str, np.ndarray]
    roots: np.ndarray
    locked: int = 0
    locked_reason: str | None = None
    kind: str = "channels"

    @property
    def size(self) -> int:
        """Number of removable channels."""
        return len(self.roots)

    def norms(self, order: int = 1) -> np.ndarray:
        """Sum over the producers of each channel's filter L1 (``order=1``) or L2 norm."""
        total = np.zeros(self.size)
        for rows in self.filters.values():
            total += np.abs(rows).sum(axis=1) if order == 1 else np.sqrt((rows.astype(np.float64) ** 2).sum(axis=1))
        return total


Importance = Union[str, Callable[[ChannelGroup], np.ndarray]]


def _head_groups(model: Any, graph: ChannelGraph) -> list[ChannelGroup]:
    return [
        ChannelGroup(
            (name,),
            {name: np.arange(len(atoms))},
            {name: graph.filters(model.get_layer(name), "heads")},
            graph.roots(atoms),
            kind="heads",
        )
        for name, atoms in graph.heads.items()
    ]


def _groups(model: Any, graph: ChannelGraph) -> list[ChannelGroup]:
    by_producer: dict[str, np.ndarray] = {}
    for node in graph.producer_nodes():
        by_producer[node.layer.name] = graph.roots(graph.maps[node.output])
    # producers sharing a root are coupled; join them (small union over producers)
    owner: dict[int, str] = {}
    link: dict[str, str] = {name: name for name in by_producer}

    def top(name: str) -> str:
        while link[name] != name:
            name = link[name]
        return name

    for name, roots in by_producer.items():
        for root in roots:
            other = owner.setdefault(int(root), name)
            if top(other) != top(name):
                link[top(name)] = top(other)
    members: dict[str, list[str]] = {}
    for name in by_producer:
        members.setdefault(top(name), []).append(name)
    groups = []
    for names in members.values():
        roots = list(dict.fromkeys(int(r) for name in names for r in by_producer[name]))
        free = [r for r in roots if graph.locked(r) is None]
        reasons = [graph.locked(r) for r in roots if graph.locked(r) is not None]
        channels, filters = {}, {}
        for name in names:
            rows = graph.filters(model.get_layer(name))
            position: dict[int, int] = {}  # a root's first output index (a Bidirectional concat repeats each unit)
            for index, root in enumerate(by_producer[name]):
                position.setdefault(int(root), index)
            index = np.array([position.get(r, -1) for r in free], dtype=np.int64)
            channels[name] = index
            filters[name] = np.where((index >= 0)[:, None], rows[np.maximum(index, 0)], 0.0) if len(free) else rows[:0]
        groups.append(
            ChannelGroup(
                tuple(names),
                channels,
                filters,
                np.array(free, dtype=np.int64),
                len(roots) - len(free),
                reasons[0] if reasons else None,
            )
        )
    return groups + _head_groups(model, graph)


def channel_groups(model: Any, *, rules: RuleMap | None = None) -> list[ChannelGroup]:
    """The model's channel groups, with their removable channels and filters (for custom importance);
    ``rules`` as in :func:`prune_channels`.

    Example::

        for group in channel_groups(model):
            print(group.producers, group.size, group.locked_reason)
    """
    return _groups(model, trace(model, rules))


def _scores(group: ChannelGroup, importance: Importance) -> np.ndarray:
    if importance == "l1":
        return group.norms(1)
    if importance == "l2":
        return group.norms(2)
    if not callable(importance):
        raise ConfigError(f"importance should be 'l1', 'l2' or a callable (group) -> scores, got {importance!r}")
    scores = np.asarray(importance(group), dtype=np.float64)
    if scores.shape != (group.size,):
        raise ConfigError(
            f"importance returned scores of shape {scores.shape} for group {group.producers}; "
            f"expected ({group.size},), one per removable channel"
        )
    if np.isnan(scores).any():
        raise ConfigError(f"importance returned NaN scores for group {group.producers}")
    return scores


def prune_channels(
    model: Any,
    example_inputs: Any = None,
    ratio: float = 0.5,
    *,
    importance: Importance = "l1",
    layers: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    rules: RuleMap | None = None,
    sparsity: float | None = None,
) -> StructuredResult:
    """Remove the fraction ``ratio`` of the lowest-importance filters/neurons of each channel group,
    and of the heads of each MultiHeadAttention (at least one head stays).

    The signature is :func:`prunekit.torch.prune_channels`'s. ``example_inputs`` is optional (a
    Keras model declares its inputs); when given, both models run on it and the pruned one must
    return outputs of the same shapes. ``sparsity=`` is the deprecated name of ``ratio``.
    ``importance`` is ``"l1"``/``"l2"`` (filter norm summed over coupled producers; for a head, the
    norm of its query/key/value/output kernel slices) or a callable ``(ChannelGroup) -> scores``.
    ``layers`` (name globs; default every producer and attention layer) chooses the layers to shrink,
    ``exclude`` keeps some whole. Channels reaching a model output stay, so the output shape does not
    change. ``rules`` (``{LayerClass: ChannelRule()}``, :mod:`prunekit.keras.structured.rules`)
    describe custom layers; without one, the channels a custom layer touches stay.

    Returns a :class:`~prunekit.core.structured.StructuredResult` (the PyTorch backend's type):
    ``.model`` the new, smaller model, ``.report`` requested vs achieved channels per group (with
    why a group stayed whole) and params/MACs per layer, ``.plan`` what was removed
    (``remove_channels(model, **plan)`` replays it); ``model`` is not changed.

    Example::

        result = prune_channels(model, ratio=0.5, importance="l2", exclude=["conv1"])
        result.model.count_params() < model.count_params()  # True
        print(result.report)
    """
    example_inputs, ratio = _ratio_argument(example_inputs, ratio, sparsity)
    graph = trace(model, rules)
    groups = _groups(model, graph)
    producers = list(dict.fromkeys(name for group in groups for name in group.producers))
    chosen = _select(producers, layers, exclude, model.name)
    removal: dict[str, list[int]] = {}
    heads: dict[str, list[int]] = {}

    def requested(group: ChannelGroup, removed: int = 0) -> tuple[float, str]:
        if group.size == 0:
            return 0.0, group.locked_reason or "no removable channels"
        blocked = [name for name in group.producers if name not in chosen]
        if len(blocked) == len(group.producers):
            return 0.0, "not selected (layers/exclude)"
        if blocked:
            return 0.0, f"coupled to excluded layer {blocked[0]!r}"
        return float(ratio), ""

    for group in groups:
        if requested(group)[1]:
            continue  # locked, not chosen, or a coupled producer is excluded: the whole group stays
        count = min(round(ratio * (group.size + group.locked)), group.size)
        count = min(count, group.size + group.locked - 1)
        if count <= 0:
            continue
        order = np.argsort(_scores(group, importance), kind="stable")[:count]
        target = heads if group.kind == "heads" else removal
        lead = group.producers[0]
        target[lead] = sorted(int(i) for i in group.channels[lead][order] if i >= 0)
        for name in group.producers[1:]:
            extra = [int(i) for i in group.channels[name][order] if i >= 0]
            if extra:
                target.setdefault(name, []).extend(extra)
    return _checked(_result(model, graph, removal, heads, requested), model, example_inputs)


def _ratio_argument(example_inputs: Any, ratio: Any, sparsity: Any) -> tuple[Any, float]:
    """``(example_inputs, ratio)`` after the deprecated spellings: ``sparsity=`` and a ratio passed
    second (where ``example_inputs`` now goes); the ratio checked."""
    if sparsity is not None:
        warnings.warn(
            "prune_channels(sparsity=...) is deprecated; call it ratio= (as prunekit.torch.prune_channels does)",
            DeprecationWarning,
            stacklevel=3,
        )
        ratio = sparsity
    elif isinstance(example_inputs, (int, float)) and not isinstance(example_inputs, bool):
        warnings.warn(
            f"prune_channels(model, {example_inputs!r}): the second argument is now example_inputs; "
            f"pass the fraction as ratio={example_inputs!r}",
            DeprecationWarning,
            stacklevel=3,
        )
        example_inputs, ratio = None, example_inputs
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 0.0 <= ratio < 1.0:
        raise ConfigError(f"ratio should be a fraction of channels in [0, 1), got {ratio!r}")
    return example_inputs, float(ratio)


def _checked(result: StructuredResult, model: Any, example_inputs: Any) -> StructuredResult:
    """``result``, after checking (when ``example_inputs`` is given) that the pruned model runs on them
    and returns outputs of the same shapes as ``model``."""
    if example_inputs is None:
        return result
    shapes = []
    for which, net in (("", model), ("pruned ", result.model)):
        try:
            shapes.append(keras.tree.map_structure(lambda t: tuple(t.shape), net(example_inputs, training=False)))
        except Exception as exc:
            raise ConfigError(
                f"the {which}model {model.name!r} failed on example_inputs ({type(exc).__name__}: {exc}); "
                "pass inputs of the shapes model.inputs declares, or leave example_inputs out"
            ) from exc
    before, after = shapes
    if after != before:
        raise ConfigError(
            f"the pruned {model.name!r} returns outputs of shapes {after} on example_inputs, the original {before}; "
            "please report this model (it is a prunekit bug)"
        )
    return result


def _select(producers: list[str], layers: Sequence[str] | None, exclude: Sequence[str], model_name: str) -> set[str]:
    for patterns, what in ((layers or (), "layers"), (exclude, "exclude")):
        for pattern in [patterns] if isinstance(patterns, str) else patterns:
            if not any(fnmatch.fnmatchcase(name, pattern) for name in producers):
                raise LayerNotFoundError(
                    f"{what} pattern {pattern!r} matches no prunable layer of {model_name!r}; "
                    f"filters/neurons/heads can be removed from {producers}"
                )
    include = [layers] if isinstance(layers, str) else layers
    exclude = [exclude] if isinstance(exclude, str) else exclude
    return {
        name
        for name in producers
        if (include is None or any(fnmatch.fnmatchcase(name, p) for p in include))
        and not any(fnmatch.fnmatchcase(name, p) for p in exclude)
    }


def remove_channels(
    model: Any,
    example_inputs: Any = None,
    channels: Mapping[str, Sequence[int]] | None = None,
    *,
    heads: Mapping[str, Sequence[int]] | None = None,
    rules: RuleMap | None = None,
) -> StructuredResult:
    """Remove the given output channels (``{producer name: [indices]}``) and attention heads
    (``{MultiHeadAttention name: [head indices]}``) and everything reading them.

    The signature is :func:`prunekit.torch.remove_channels`'s; ``example_inputs`` is optional and,
    when given, checks the pruned model's output shapes. A channel mapping passed second (the
    former place of ``channels``) still works, with a ``DeprecationWarning``. ``rules`` as in
    :func:`prune_channels`.

    Channels coupled to another producer (through Add, Multiply, ...) are removed from it too.
    Raises for a channel that cannot be removed (it reaches a model output, or a layer prunekit
    does not rewrite) and says why.

    Example::

        small = remove_channels(model, channels={"conv1": [0, 5], "fc1": list(range(64))}).model
        small = remove_channels(transformer, channels={"ffn_in": [3, 9]}, heads={"attention": [1, 2]}).model
    """
    if channels is None and _is_channel_map(model, example_inputs):
        warnings.warn(
            "remove_channels(model, {layer: [indices]}): the second argument is now example_inputs; "
            "pass the mapping as channels={...}",
            DeprecationWarning,
            stacklevel=2,
        )
        example_inputs, channels = None, example_inputs
    channels, heads = channels or {}, heads or {}

    def requested(group: ChannelGroup, removed: int) -> tuple[float, str]:
        return removed / (group.size + group.locked), "" if removed else "not asked"

    return _checked(_result(model, trace(model, rules), channels, heads, requested), model, example_inputs)


def _is_channel_map(model: Any, value: Any) -> bool:
    """Whether ``value`` is a ``{layer name: [indices]}`` mapping rather than inputs keyed by input name."""
    names = {layer.name for layer in model.layers if not isinstance(layer, L.InputLayer)}
    return isinstance(value, Mapping) and bool(value) and set(value) <= names


def _pruned_roots(
    graph: ChannelGraph, targets: Mapping[str, np.ndarray], removal: Mapping[str, Sequence[int]], what: str
) -> set[int]:
    """The atom classes ``removal`` (``{layer: [indices]}``) removes from ``targets`` (``{layer: atoms}``)."""
    pruned: set[int] = set()
    for name, indices in removal.items():
        atoms = targets[name]
        for index in indices:
            if not (isinstance(index, (int, np.integer)) and 0 <= index < len(atoms)):
                raise ConfigError(f"{what} index {index!r} is out of range for layer {name!r} with {len(atoms)} {what}s")
            root = graph.find(int(atoms[index]))
            reason = graph.locked(root)
            if reason is not None:
                raise ConfigError(f"{what} {index} of layer {name!r} cannot be removed: {reason}")
            pruned.add(root)
    for name, atoms in targets.items():
        if all(graph.find(int(a)) in pruned for a in atoms):
            raise ConfigError(f"removing every {what} of layer {name!r} would leave it empty; keep at least one")
    return pruned


def _check_names(
    graph: ChannelGraph, model: Any, removal: Mapping[str, Sequence[int]], targets: Mapping[str, Any], what: str
) -> None:
    for name in removal:
        if name in targets:
            continue
        if name in graph.opaque:
            raise LayerNotFoundError(f"{name!r} is not a layer whose {what}s can be removed: {graph.opaque[name]}")
        known = [layer.name for layer in model.layers]
        raise LayerNotFoundError(
            f"{name!r} is not a layer whose {what}s can be removed ({REMOVABLE[what]}); the model's layers are {known}"
        )


def _rebuild(
    model: Any, graph: ChannelGraph, channels: Mapping[str, Sequence[int]], heads: Mapping[str, Sequence[int]]
) -> tuple[keras.Model, set[int]]:
    """The smaller model without ``channels`` and ``heads``, and the channel classes (roots) removed:
    each layer's rule gives its new config fields, and every weight dimension a rule labelled keeps
    the positions of surviving channels."""
    producer_maps = {node.layer.name: graph.maps[node.output] for node in graph.producer_nodes()}
    _check_names(graph, model, channels, producer_maps, "channel")
    _check_names(graph, model, heads, graph.heads, "head")
    graph.pruned = _pruned_roots(graph, producer_maps, channels, "channel") | _pruned_roots(graph, graph.heads, heads, "head")
    keep = {tid: graph.kept(atoms) for tid, atoms in graph.maps.items()}
    updates = {
        node.layer.name: graph.rules[node.layer.name].shrink(node.layer, Shrink(graph, node, keep))
        for node in graph.nodes
        if getattr(node.layer, "name", None) in graph.rules
    }
    config = copy.deepcopy(model.get_config())
    for entry in config["layers"]:
        entry.pop("build_config", None)
        for key, value in updates.get(entry["config"].get("name"), {}).items():
            _set_field(entry["config"], key, value)
    rebuilt = type(model).from_config(config)
    for layer in model.layers:
        if layer.weights:
            _set_weights(graph, layer, rebuilt.get_layer(layer.name))
    if getattr(model, "compiled", False):
        rebuilt.compile_from_config(model.get_compile_config())
    return rebuilt, set(graph.pruned)


def _set_field(config: dict, dotted: str, value: Any) -> None:
    """Set ``config[a][b]...`` for ``"a.b..."``, dropping the nested layers' stale ``build_config``."""
    *path, last = dotted.split(".")
    for part in path:
        config.pop("build_config", None)
        config = config[part]
    config.pop("build_config", None)
    config[last] = value


def _set_weights(graph: ChannelGraph, layer: Any, new: Any) -> None:
    """Copy ``layer``'s sliced weights into its rebuilt twin; a mismatch names the layer's rule."""
    sliced = _sliced_weights(graph, layer)
    expected = [tuple(w.shape) for w in new.weights]
    if [w.shape for w in sliced] != expected:
        rule = graph.rules.get(layer.name)
        raise RuleError(
            f"rule {type(rule).__name__} for {describe(layer)}: the rebuilt layer's weights have shapes {expected}, "
            f"the sliced ones {[w.shape for w in sliced]}; label every weight dimension that follows the channels "
            "(ctx.weight(...)) and return the config fields that size the layer from shrink()"
            if rule is not None
            else f"{describe(layer)} was rebuilt with weights of shapes {expected}, not {[w.shape for w in sliced]}; "
            "describe it with rules={...} (prunekit.keras.structured.rules)"
        )
    new.set_weights(sliced)


def _sliced_weights(graph: ChannelGraph, layer: Any) -> list[np.ndarray]:
    """``layer``'s weights in order, each dimension its rule labelled keeping the surviving positions."""
    weights = [np.asarray(w.numpy()) for w in layer.weights]
    for name, labels in graph.weight_labels.get(layer.name, {}).items():
        variable = resolve(layer, name)
        index = next(i for i, w in enumerate(layer.weights) if w is variable)
        weights[index] = weights[index][np.ix_(*(graph.kept(dim) for dim in labels))]
    return weights


def _result(
    model: Any,
    graph: ChannelGraph,
    channels: Mapping[str, Sequence[int]],
    heads: Mapping[str, Sequence[int]],
    requested: Callable[[ChannelGroup, int], tuple[float, str]],
) -> StructuredResult:
    """Rebuild without ``channels``/``heads`` and report each group: ``requested(group, removed)`` gives
    the ratio asked of it and, for a group left whole, why."""
    small, pruned = _rebuild(model, graph, channels, heads)
    records, removed = [], {}
    for group in _groups(model, graph):
        gone = [k for k, root in enumerate(group.roots) if int(root) in pruned]
        lead = group.producers[0]
        ratio, skipped = requested(group, len(gone))
        before = group.size + group.locked
        records.append(GroupRecord(lead, group.kind, list(group.producers), before, before - len(gone), ratio, skipped))
        if gone:
            removed[lead] = sorted(int(group.channels[lead][k]) for k in gone if group.channels[lead][k] >= 0)
    plan = {
        "channels": {name: sorted(int(i) for i in indices) for name, indices in channels.items() if len(indices)},
        "heads": {name: sorted(int(i) for i in indices) for name, indices in heads.items() if len(indices)},
    }
    return StructuredResult(small, plan, _report(model, small, records), removed)


def _report(model: Any, small: Any, groups: list[GroupRecord]) -> StructuredReport:
    """Params and MACs per layer before and after, beside the group records."""
    before, after = summarize(model), summarize(small)
    kept = {layer.name: layer for layer in after.layers}
    layers = []
    for layer in before.layers:
        new = kept.get(layer.name)
        width = (_width(model, layer.name), _width(small, layer.name))
        layers.append(
            LayerRecord(
                layer.name, layer.type, layer.params, new.params if new else 0, layer.macs, new.macs if new else 0, *width
            )
        )
    return StructuredReport(groups, layers, before.params, after.params, before.macs, after.macs)


def _width(model: Any, name: str) -> int | None:
    """A layer's output width as its config declares it (units, filters, output_dim), if any."""
    config = _find_layer(model, name)
    if config is None:
        return None
    values = [config.get(key) for key in ("units", "filters", "output_dim")]
    return next((int(v) for v in values if isinstance(v, int)), None)


def _find_layer(model: Any, name: str) -> dict[str, Any] | None:
    try:
        return dict(model.get_layer(name).get_config())
    except ValueError:
        return None
