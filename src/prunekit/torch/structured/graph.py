"""Dependency analysis: which channel dimensions of which tensors must be pruned together.

``analyze_dependencies`` runs the model once on example inputs under a recorder (see
``_tracing``), follows every op with a rule (``_rules_shape``, ``_rules_layers``) and returns a
:class:`DependencyGraph`: a list of :class:`ChannelGroup`, each a set of coupled channels with
every parameter and buffer slice that holds them. Ops without a rule are listed by name in
``graph.unsupported`` and the channels they touch are kept (``strict=True`` raises instead).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.torch.structured.heads import head_split_dims
from prunekit.torch.structured.labels import FIXED, LabelState, connected_roots, tensor_refs
from prunekit.torch.structured.rules.base import ChannelRule, apply_black_box_rule, black_box_modules, check_rules, rule_for
from prunekit.torch.structured.rules.layers import LAYER_RULES
from prunekit.torch.structured.rules.shape import SHAPE_RULES, all_outputs_zero
from prunekit.torch.structured.shared_sizes import drop_literal_heads, tie_attribute_sizes
from prunekit.torch.structured.tracing import ExampleInputs, OpRecord, Trace, trace_model


@dataclass(frozen=True)
class GroupMember:
    """One tensor dimension holding a group's channels.

    ``index[i]`` is the group channel held at position ``i`` of dimension ``dim`` of ``tensor``,
    or ``-1`` where that position belongs to no channel of this group. ``role`` is
    ``"producer"`` (the dimension makes the channels: conv/linear outputs, embedding width),
    ``"consumer"`` (it reads them: conv/linear inputs) or ``"follower"`` (BN/LN affine and
    statistics, biases, positional embeddings, layer scales).
    """

    tensor: str
    dim: int
    index: np.ndarray
    role: str
    is_buffer: bool

    @property
    def module(self) -> str:
        """Qualified name of the module owning the tensor (``"layer1.0.conv1"``)."""
        return self.tensor.rpartition(".")[0]


@dataclass
class ChannelGroup:
    """Coupled channels that are kept or removed together, with every tensor slice holding them.

    ``size`` is the number of channels (for attention groups a channel is one head, or one
    key/value group of heads). ``exact`` is ``False`` when removing a channel changes the values
    of other channels even if it carries zeros (it passes through a LayerNorm or a mean over
    channels), so pruning it cannot be function-preserving.

    Example::

        graph = analyze_dependencies(model, torch.randn(1, 3, 32, 32))
        group = graph.groups[0]
        group.name, group.size, group.producers  # ('conv1', 16, ['conv1'])
    """

    id: int
    name: str
    kind: str
    size: int
    unit: int
    exact: bool
    members: list[GroupMember]
    graph: DependencyGraph = field(repr=False)

    @property
    def producers(self) -> list[str]:
        """Modules whose outputs are these channels."""
        return _unique(m.module for m in self.members if m.role == "producer")

    @property
    def consumers(self) -> list[str]:
        """Modules that read these channels as inputs."""
        return _unique(m.module for m in self.members if m.role == "consumer")

    @property
    def modules(self) -> list[str]:
        """Every module with a tensor slice in the group."""
        return _unique(m.module for m in self.members)

    def tensors(self, parameters_only: bool = True) -> Iterator[tuple[GroupMember, torch.Tensor]]:
        """Each member with its live tensor (parameters only, unless asked for buffers too)."""
        for member in self.members:
            if parameters_only and member.is_buffer:
                continue
            yield member, self.graph.tensor(member.tensor)

    def reduce(self, values: torch.Tensor, member: GroupMember) -> torch.Tensor:
        """Sum a per-position tensor (``values`` has the member tensor's shape) into one value per
        channel of this group, in float64.

        Example::

            scores = sum(group.reduce(t.abs(), m) for m, t in group.tensors())
        """
        values = values.detach()
        other = [d for d in range(values.dim()) if d != member.dim]
        per_position = (values.sum(dim=other) if other else values).double()
        index = torch.as_tensor(member.index, device=per_position.device)
        keep = index >= 0
        out = torch.zeros(self.size, dtype=torch.float64, device=per_position.device)
        return out.index_add(0, index[keep], per_position[keep])

    def __repr__(self) -> str:
        return (
            f"ChannelGroup({self.name!r}, kind={self.kind!r}, size={self.size}, exact={self.exact}, producers={self.producers})"
        )


MODEL_OUTPUT = "coupled to the model output (pass protect_outputs=False to prune it)"
MODEL_INPUT = "coupled to the model input"
TIED_PREFIX = "tied at node "


def is_structural(reason: str) -> bool:
    """Whether a reason for keeping channels is the model's own structure (its inputs and outputs,
    positions that are not channels) rather than a gap in the analysis or a user's choice."""
    return reason in (MODEL_OUTPUT, MODEL_INPUT) or reason.startswith(TIED_PREFIX)


@dataclass(frozen=True)
class LeftAlone:
    """A prunable-looking dimension (one that makes channels: conv/linear outputs, embedding
    width) whose channels, all or ``channels`` of ``size`` of them, are kept, and why."""

    tensor: str
    dim: int
    channels: int
    size: int
    reason: str

    @property
    def module(self) -> str:
        """Qualified name of the module owning the tensor."""
        return self.tensor.rpartition(".")[0]

    @property
    def expected(self) -> bool:
        """Kept by the model's structure (its inputs and outputs, positions that are not channels),
        not by a gap in the analysis."""
        return is_structural(self.reason)

    @property
    def text(self) -> str:
        """One line for reports and errors."""
        return f"{self.module or '<root>'} ({self.tensor} dim {self.dim}, {self.channels} of {self.size} channels): {self.reason}"


@dataclass
class DependencyGraph:
    """The result of :func:`analyze_dependencies`: groups, the ops left alone, and the labels
    needed to plan and verify a pruning."""

    model: nn.Module
    trace: Trace
    groups: list[ChannelGroup]
    unsupported: list[tuple[str, str]]
    state: LabelState = field(repr=False)
    roots: np.ndarray = field(repr=False)
    group_of_root: np.ndarray = field(repr=False)
    channel_of_root: np.ndarray = field(repr=False)
    tensors: dict[str, torch.Tensor] = field(repr=False)
    rules: dict[type, ChannelRule] = field(default_factory=dict, repr=False)
    black_box_ops: dict[str, OpRecord] = field(default_factory=dict, repr=False)
    rule_modules: list[str] = field(default_factory=list, repr=False)
    left_alone: list[LeftAlone] = field(default_factory=list)
    head_problems: list[tuple[str, str]] = field(default_factory=list)

    def tensor(self, name: str) -> torch.Tensor:
        """The live parameter or buffer called ``name``."""
        return self.tensors[name]

    def group(self, name: str) -> ChannelGroup:
        """The group called ``name`` (the module producing its channels)."""
        for group in self.groups:
            if group.name == name:
                return group
        raise KeyError(f"no channel group named {name!r}; groups are {[g.name for g in self.groups]}")

    def removed_roots(self, selection: dict[int, Iterable[int]]) -> np.ndarray:
        """Boolean mask over atoms: ``True`` for every atom whose channel is removed."""
        removed_channels = np.zeros(self.roots.shape[0], bool)
        for gid, channels in selection.items():
            chosen = np.zeros(self.groups[gid].size, bool)
            chosen[np.asarray(list(channels), np.int64)] = True
            mine = np.nonzero((self.group_of_root == gid) & (self.channel_of_root >= 0))[0]
            removed_channels[mine[chosen[self.channel_of_root[mine]]]] = True
        return removed_channels[self.roots]

    def kept_positions(self, atoms: np.ndarray, removed: np.ndarray) -> np.ndarray:
        """Indices of positions whose atom survives."""
        return np.nonzero(~removed[atoms])[0]

    def expected_shapes(self, removed: np.ndarray) -> dict[int, tuple[int, ...]]:
        """Shape every traced value should have after removing the atoms in ``removed``."""
        return {vid: tuple(int((~removed[lab]).sum()) for lab in labels) for vid, labels in self.state.labels.items()}

    def summary(self) -> str:
        """A readable table of groups and unsupported ops."""
        lines = [f"{len(self.groups)} channel groups:"]
        for g in self.groups:
            lines.append(
                f"  {g.name:<40} {g.kind:<8} {g.size:>5} ch  {'exact' if g.exact else 'inexact'}  consumers={g.consumers}"
            )
        if self.unsupported:
            lines.append("ops left unpruned (their channels are kept):")
            lines.extend(f"  {label}: {reason}" for label, reason in self.unsupported)
        if self.left_alone:
            lines.append("channels left alone:")
            lines.extend(f"  {entry.text}" for entry in self.left_alone)
        lines.extend(f"  {reason}" for _, reason in self.head_problems)
        return "\n".join(lines)


def analyze_dependencies(
    model: nn.Module,
    example_inputs: ExampleInputs,
    *,
    strict: bool = False,
    protect_outputs: bool = True,
    leaf_modules: Iterable[str] = (),
    rules: Mapping[type, ChannelRule] | None = None,
    _opaque_ops: Iterable[int] = (),
) -> DependencyGraph:
    """Trace ``model`` on ``example_inputs`` and find the groups of channels pruned together.

    ``example_inputs`` is a tensor, a tuple of positional inputs or a dict of keyword inputs.
    Channels of the model's outputs are protected unless ``protect_outputs=False``. Ops the
    analysis has no rule for keep every channel they touch and are listed in
    ``graph.unsupported``; with ``strict=True`` they raise ``ConfigError``. ``leaf_modules``
    names modules to run as black boxes (their inputs and outputs keep all channels).
    ``rules={ModuleClass: ChannelRule()}`` tells how custom modules' channels couple and shrink
    (see :mod:`prunekit.torch.structured.rules`); a rule whose description does not fit the
    traced shapes raises :class:`~prunekit.torch.structured.rules.RuleError` naming it.

    Example::

        graph = analyze_dependencies(DigitsCNN(), torch.zeros(1, 1, 8, 8))
        [(g.name, g.size) for g in graph.groups]  # [('conv1', 32), ('conv2', 64), ('fc1', 128)]
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"analyze_dependencies expects an nn.Module, got {type(model).__name__}")
    leaf_modules = list(leaf_modules)
    _check_module_names(model, leaf_modules, "leaf_modules")
    user_rules = check_rules(rules)
    black_boxes = {n: r for n, r in black_box_modules(model, user_rules).items() if n not in leaf_modules}
    trace = trace_model(model, example_inputs, leaf_modules + list(black_boxes))
    state = LabelState(trace, frozenset(_opaque_ops))
    modules = dict(model.named_modules())
    head_dims, head_problems = head_split_dims(trace)
    state.head_dims = drop_literal_heads(head_dims, trace, modules)
    black_box_ops: dict[str, OpRecord] = {}
    for op in trace.ops:
        state.reason = f"{TIED_PREFIX}{op.label} to positions that are not prunable channels (batch, space, tokens or inputs)"
        if op.name == "leaf_module" and op.module in black_boxes:
            black_box_ops.setdefault(op.module, op)
            apply_black_box_rule(state, op, modules[op.module], black_boxes[op.module])
            all_outputs_zero(state, op)
        else:
            _apply_rule(state, op, modules)
    tie_attribute_sizes(state, modules)
    if protect_outputs:
        for ref in tensor_refs(trace.outputs):
            state.fix_value(ref, MODEL_OUTPUT)
    for ref in tensor_refs(trace.inputs):
        state.fix_value(ref, MODEL_INPUT)
    graph = _build_graph(model, trace, state)
    graph.left_alone = _left_alone(state, graph.roots)
    graph.head_problems = head_problems
    graph.rules = user_rules
    graph.black_box_ops = black_box_ops
    graph.rule_modules = [name for name, module in modules.items() if rule_for(module, user_rules) is not None]
    problems = [entry.text for entry in graph.left_alone if not entry.expected] + [r for _, r in graph.head_problems]
    if strict and problems:
        raise ConfigError(
            f"strict=True: {problems[0]}. {len(problems)} channel dimension(s) would be left unpruned; pass "
            "strict=False to accept that, rules={ModuleClass: ChannelRule()} to describe a custom module, or "
            "leaf_modules=[...] / ignore_outputs=[...] to exclude the modules involved"
        )
    if strict and graph.unsupported:
        listed = "; ".join(f"{label} ({reason})" for label, reason in graph.unsupported)
        raise ConfigError(
            f"strict=True: {len(graph.unsupported)} op(s) have no pruning rule: {listed}. Their channels would be "
            "kept; pass strict=False to accept that, rules={ModuleClass: ChannelRule()} to describe a custom "
            "module, or leaf_modules=[...] / ignore_outputs=[...] to exclude the modules running them"
        )
    return graph


def _check_module_names(model: nn.Module, names: list[str], field_name: str) -> None:
    known = {name for name, _ in model.named_modules()}
    for name in names:
        if name not in known:
            from prunekit.errors import LayerNotFoundError

            raise LayerNotFoundError(f"{field_name}: no module named {name!r} in {type(model).__name__}")


def _apply_rule(state: LabelState, op: OpRecord, modules: Mapping[str, nn.Module]) -> None:
    if not tensor_refs(op.outputs):
        return
    if op.index in state.opaque_ops:
        state.unsupported_op(op, "its output shapes changed in a trial pruning, so it is left alone")
    elif op.name == "leaf_module":
        state.unsupported_op(op, "leaf module (run as a black box)")
    else:
        rule = LAYER_RULES.get(op.name) or SHAPE_RULES.get(op.name)
        if rule is None:
            state.unsupported_op(op, _no_rule(op, modules))
        else:
            try:
                rule(state, op)
            except Exception as exc:  # a rule meeting an argument form it does not know
                state.unsupported_op(op, f"could not follow {op.name!r}: {type(exc).__name__}: {exc}")
    all_outputs_zero(state, op)


def _left_alone(state: LabelState, roots: np.ndarray) -> list[LeftAlone]:
    """Every producer dimension with kept channels, with the first reason they were kept."""
    reason_of, texts = state.fixed_reasons()
    found = []
    candidates = list(state.producers)
    with_producers = {name for name, _ in candidates}
    for op, _ in state.unsupported:  # weights handed to an op with no rule never became producers
        for ref in tensor_refs((op.args, op.kwargs)):
            name = state.trace.param_name(ref.vid)
            if name is not None and name not in with_producers and len(state.trace.shapes[ref.vid]) >= 2:
                with_producers.add(name)
                candidates.append((name, 0))
    for name, dim in candidates:
        atoms = state.tensor_atoms[name][dim]
        fixed = roots[atoms] == FIXED
        if not fixed.any():
            continue
        numbers = reason_of[atoms[fixed]]
        known = numbers[numbers >= 0]
        reason = texts[int(np.bincount(known).argmax())] if known.size else "kept (no recorded reason)"
        found.append(LeftAlone(name, dim, int(fixed.sum()), len(atoms), reason))
    return found


def _no_rule(op: OpRecord, modules: Mapping[str, nn.Module]) -> str:
    module = modules.get(op.module)
    owner = type(module).__name__ if module is not None else "module"
    return (
        f"no rule for op {op.name!r} in module {op.module or '<root>'!r} ({owner}); describe the module with "
        f"rules={{{owner}: YourRule()}} (a prunekit.torch.structured.rules.ChannelRule)"
    )


def _build_graph(model: nn.Module, trace: Trace, state: LabelState) -> DependencyGraph:
    roots = state.components()
    size = state.next_atom
    inexact = np.zeros(size, bool)
    if state.inexact:
        inexact[roots[np.concatenate(state.inexact)]] = True
    batches = []
    for name, dim in state.producers:
        r = roots[state.tensor_atoms[name][dim]]
        r = r[r != FIXED]
        if r.size:
            _, first = np.unique(r, return_index=True)
            batches.append((name, dim, r[np.sort(first)]))
    a = np.concatenate([b[2][:-1] for b in batches]) if batches else np.zeros(0, np.int64)
    b = np.concatenate([b[2][1:] for b in batches]) if batches else np.zeros(0, np.int64)
    group_root = connected_roots(size, a, b)
    group_of_root = np.full(size, -1, np.int64)
    channel_of_root = np.full(size, -1, np.int64)
    group_index: dict[int, int] = {}
    counts: list[int] = []
    firsts: list[tuple[str, int]] = []
    for name, dim, channels in batches:
        for root in channels.tolist():
            key = int(group_root[root])
            gid = group_index.get(key)
            if gid is None:
                gid = group_index[key] = len(counts)
                counts.append(0)
                firsts.append((name, dim))
            if channel_of_root[root] < 0:
                channel_of_root[root] = counts[gid]
                counts[gid] += 1
                group_of_root[root] = gid
    tensors = dict(_named_tensors(model))
    buffers = {name for name, _ in model.named_buffers()}
    members: list[list[GroupMember]] = [[] for _ in counts]
    producers, consumers = set(state.producers), state.consumers
    for name, atoms_per_dim in state.tensor_atoms.items():
        for dim, atoms in enumerate(atoms_per_dim):
            r = roots[atoms]
            groups_here = group_of_root[r]
            for gid in np.unique(groups_here[groups_here >= 0]):
                index = np.where(groups_here == gid, channel_of_root[r], -1)
                role = "producer" if (name, dim) in producers else "consumer" if (name, dim) in consumers else "follower"
                members[int(gid)].append(GroupMember(name, dim, index, role, name in buffers))
    attention_roots = set()
    for record in state.attention:
        attention_roots.update(int(x) for x in roots[record.query_heads])
    recurrent_roots = {int(x) for record in state.recurrent for x in roots[record.units]}
    graph = DependencyGraph(
        model,
        trace,
        [],
        [(op.label, reason) for op, reason in state.unsupported],
        state,
        roots,
        group_of_root,
        channel_of_root,
        tensors,
    )
    names: dict[str, int] = {}
    # every group's roots in one sort (a mask per group would cost groups x atoms)
    in_group = np.nonzero(group_of_root >= 0)[0]
    by_group = in_group[np.argsort(group_of_root[in_group], kind="stable")]
    roots_of_group = np.split(by_group, np.cumsum(np.bincount(group_of_root[in_group], minlength=len(counts)))[:-1])
    for gid, (first_name, first_dim) in enumerate(firsts):
        group_roots = roots_of_group[gid]
        base = first_name.rpartition(".")[0] or first_name
        names[base] = names.get(base, 0) + 1
        label = base if names[base] == 1 else f"{base}#{names[base]}"
        first_member = next(m for m in members[gid] if m.tensor == first_name and m.dim == first_dim)
        # a hidden unit's gate rows are one channel: round_to counts units, not rows
        recurrent = recurrent_roots.intersection(int(x) for x in group_roots)
        unit = 1 if recurrent else int((first_member.index == 0).sum())
        kind = "heads" if attention_roots.intersection(int(x) for x in group_roots) else "channels"
        graph.groups.append(
            ChannelGroup(gid, label, kind, len(group_roots), unit, not bool(inexact[group_roots].any()), members[gid], graph)
        )
    return graph


def _named_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    yield from model.named_parameters()
    yield from model.named_buffers()


def _unique(items: Iterable[str]) -> list[str]:
    seen: list[str] = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return seen


__all__ = ["ChannelGroup", "DependencyGraph", "GroupMember", "LeftAlone", "analyze_dependencies"]
