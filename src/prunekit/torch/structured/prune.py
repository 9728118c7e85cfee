"""Structured pruning: physically remove channels, filters, neurons and attention heads.

``prune_channels`` analyses the model's dependencies, scores every channel group, chooses
what to remove, records it as a plan, slices the tensors and updates the attributes code reads,
then *verifies* the result by tracing the pruned model and checking that every intermediate
tensor has exactly the predicted shape. An op that does not (a size written as a literal in the
model's code) is left alone and the pruning is redone, so the returned model is never silently
inconsistent. The user's model is untouched unless ``inplace=True`` (then it is rolled back on
any failure).
"""

from __future__ import annotations

import copy
import fnmatch
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from prunekit.core.structured import StructuredResult
from prunekit.errors import ConfigError
from prunekit.torch.structured.allocation import GroupTarget, check_globs, group_targets, select_channels
from prunekit.torch.structured.graph import DependencyGraph, analyze_dependencies
from prunekit.torch.structured.importance import Importance, resolve_importance
from prunekit.torch.structured.labels import FIXED, tensor_refs
from prunekit.torch.structured.plan import (
    PLAN_FORMAT,
    PLAN_VERSION,
    apply_plan,
    attach_plan,
    compose_plans,
    new_shape,
    plan_of,
)
from prunekit.torch.structured.repair import size_attribute_repairs
from prunekit.torch.structured.report import GroupRecord, build_report, measure
from prunekit.torch.structured.rules.base import ChannelRule, RuleError, check_rules, rule_for
from prunekit.torch.structured.shortfall import heads_kept_whole, measure_shortfall
from prunekit.torch.structured.surgery import plan_attributes
from prunekit.torch.structured.tracing import ExampleInputs, TraceError, trace_model

_MAX_ATTEMPTS = 6


class PruningShortfallWarning(UserWarning):
    """The achieved MACs reduction is more than 10 % below what the channel ratio asked for."""


class HeadsNotFollowedWarning(PruningShortfallWarning):
    """An attention product's heads could not be followed back to the reshape that makes them: its
    heads are not pruned as heads (the report's notes name the product and where the walk stopped)."""


@dataclass
class _Failure:
    op_index: int
    label: str
    detail: str


def build_plan(model: nn.Module, graph: DependencyGraph, selection: Mapping[int, Iterable[int]]) -> dict[str, Any]:
    """The plan removing ``selection`` (group id -> channel indices) from the analysed model.

    Example::

        graph = analyze_dependencies(model, x)
        plan = build_plan(model, graph, {graph.group("conv1").id: [0, 3]})
        undo = apply_plan(model, plan)
    """
    removed = graph.removed_roots(selection)
    tensors: dict[str, Any] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for name, atoms_per_dim in graph.state.tensor_atoms.items():
        if name not in graph.tensors:
            continue
        keep: dict[str, list[int]] = {}
        for dim, atoms in enumerate(atoms_per_dim):
            kept = np.nonzero(~removed[atoms])[0]
            if len(kept) == 0:
                raise ConfigError(
                    f"this selection removes every channel of dimension {dim} of {name!r}; "
                    "keep at least one channel in every group"
                )
            if len(kept) < len(atoms):
                keep[str(dim)] = kept.tolist()
        if keep:
            entry = {"shape": list(graph.tensor(name).shape), "keep": keep}
            tensors[name] = entry
            shapes[name] = new_shape(entry)
    return {
        "format": PLAN_FORMAT,
        "version": PLAN_VERSION,
        "model": type(model).__name__,
        "tensors": tensors,
        "attributes": plan_attributes(model, graph, removed, shapes),
    }


def _verify(
    model: nn.Module, graph: DependencyGraph, removed: np.ndarray, example_inputs: ExampleInputs, leaf_modules: Sequence[str]
) -> _Failure | None:
    """Trace the pruned model and compare every op's output shapes with the predicted ones."""
    expected = graph.expected_shapes(removed)
    original = graph.trace.ops
    try:
        trace = trace_model(model, example_inputs, leaf_modules, fake=graph.trace.fake)
    except TraceError as exc:
        index = min(exc.op_index, len(original) - 1)
        if exc.where.endswith(":leaf_module"):  # a black box raised: report it, wherever its record falls
            index = next((op.index for op in original if op.label == exc.where), index)
        return _Failure(index, original[index].label, f"the pruned model raised there: {exc.__cause__}")
    for old, new in zip(original, trace.ops):
        if old.name != new.name:
            return _Failure(old.index, old.label, f"the pruned model ran {new.name!r} instead")
        old_outs, new_outs = tensor_refs(old.outputs), tensor_refs(new.outputs)
        for o, n in zip(old_outs, new_outs):
            want, got = expected.get(o.vid), trace.shapes[n.vid]
            if want is not None and _channels_differ(want, got, graph.state.labels[o.vid]):
                return _Failure(old.index, old.label, f"output shape {tuple(got)}, expected {tuple(want)}")
    if len(original) != len(trace.ops):
        index = min(len(original), len(trace.ops)) - 1
        return _Failure(index, original[index].label, "the pruned model ran a different number of ops")
    return None


def _channels_differ(want: tuple[int, ...], got: tuple[int, ...], labels: list[np.ndarray]) -> bool:
    """Whether a pruned op's output shape breaks the prediction: a different rank, or a different
    size in a dimension holding channels. Dimensions holding none (tokens routed by ``nonzero``,
    data-dependent lengths) may change with the pruned weights' values."""
    if len(want) != len(got):
        return True
    return any(w != g for w, g, lab in zip(want, got, labels) if (lab != FIXED).any())


def _check_plain_module(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise ConfigError(f"structured pruning expects an nn.Module, got {type(model).__name__}")
    if hasattr(model, "_orig_mod"):
        raise ConfigError(
            "the model is wrapped by torch.compile; prune the original module (model._orig_mod) and compile the pruned one"
        )
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        raise ConfigError(
            f"the model is wrapped in {type(model).__name__}; prune model.module, then wrap the "
            "pruned model again (its parameters are new objects)"
        )


def _check_ratio(value: Any, name: str, errors: list[str]) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        errors.append(f"{name} should be a number in [0, 1), got {value!r}")


def _as_list(value: Any, name: str, errors: list[str]) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    items = list(value)
    if not all(isinstance(v, str) for v in items):
        errors.append(f"{name} should be layer names or globs (strings), got {value!r}")
        return []
    return items


def _validate(
    model: Any,
    ratio: Any,
    scope: str,
    max_layer_ratio: Any,
    layer_ratios: Any,
    round_to: Any,
    ignore_outputs: Any,
    ignore_inputs: Any,
    leaf_modules: Any,
) -> tuple[list[str], list[str], list[str], dict]:
    errors: list[str] = []
    _check_plain_module(model)
    _check_ratio(ratio, "ratio", errors)
    if scope not in ("layer", "global"):
        errors.append(f"scope should be 'layer' or 'global', got {scope!r}")
    if (
        isinstance(max_layer_ratio, bool)
        or not isinstance(max_layer_ratio, (int, float))
        or not 0.0 < float(max_layer_ratio) < 1.0
    ):
        errors.append(f"max_layer_ratio should be in (0, 1), got {max_layer_ratio!r}")
    ratios = dict(layer_ratios or {})
    for pattern, value in ratios.items():
        _check_ratio(value, f"layer_ratios[{pattern!r}]", errors)
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
        errors.append(f"round_to should be a positive integer or None, got {round_to!r}")
    outputs = _as_list(ignore_outputs, "ignore_outputs", errors)
    inputs = _as_list(ignore_inputs, "ignore_inputs", errors)
    leaves = _as_list(leaf_modules, "leaf_modules", errors)
    if errors:
        raise ConfigError("; ".join(errors))
    return outputs, inputs, leaves, ratios


def prune_channels(
    model: nn.Module,
    example_inputs: ExampleInputs,
    ratio: float = 0.5,
    *,
    importance: str | Importance = "l1",
    scope: str = "layer",
    max_layer_ratio: float = 0.9,
    layer_ratios: Mapping[str, float] | None = None,
    round_to: int | None = None,
    ignore_outputs: Sequence[str] = (),
    ignore_inputs: Sequence[str] = (),
    leaf_modules: Sequence[str] = (),
    protect_outputs: bool = True,
    strict: bool = False,
    inplace: bool = False,
    calibration: Iterable[Any] | None = None,
    loss_fn: Callable[[nn.Module, Any], Any] | None = None,
    seed: int = 0,
    verify: bool = True,
    rules: Mapping[type, ChannelRule] | None = None,
) -> StructuredResult:
    """Remove ``ratio`` of the channels of every prunable group, least important first.

    ``example_inputs`` is a tensor, a tuple of positional inputs or a dict of keyword inputs.
    ``importance`` is ``"l1"`` (default), ``"l2"``, ``"random"``, ``"taylor"``, ``"bn_scale"``,
    ``"activation"``, ``"apoz"`` or any callable ``(group) -> scores``; ``"taylor"`` and the
    activation criteria need ``calibration`` batches (and Taylor a ``loss_fn(model, batch)``
    unless batches are ``(inputs, labels)`` for a classifier).

    ``scope="layer"`` removes ``ratio`` of each group; ``"global"`` ranks channels across groups
    (scores normalised per group) and removes ``ratio`` of all of them, at most
    ``max_layer_ratio`` of any one group. ``layer_ratios={"glob": r}`` overrides the ratio of
    groups produced by matching layers; ``round_to`` keeps channel counts multiples of it;
    ``ignore_outputs``/``ignore_inputs`` keep the output/input channels of matching layers. The
    model's output channels are protected unless ``protect_outputs=False``.
    ``rules={ModuleClass: ChannelRule()}`` describes custom modules (how their channels couple,
    which attributes shrink); see :mod:`prunekit.torch.structured.rules`.

    Returns a :class:`StructuredResult` with the smaller model (a copy unless ``inplace``), its
    plan and a report. Example::

        result = prune_channels(model, torch.randn(1, 3, 32, 32), 0.5, importance="l2", round_to=8)
        result.model, result.report.macs_ratio
    """
    outputs, inputs, leaves, ratios = _validate(
        model, ratio, scope, max_layer_ratio, layer_ratios, round_to, ignore_outputs, ignore_inputs, leaf_modules
    )
    criterion = resolve_importance(importance, calibration, loss_fn, seed)
    names = [name for name, _ in model.named_modules()]
    check_globs(names, outputs, "ignore_outputs")
    check_globs(names, inputs, "ignore_inputs")
    check_globs(names, list(ratios), "layer_ratios")
    working = model if inplace else copy.deepcopy(model)

    def choose(graph: DependencyGraph) -> tuple[list[GroupTarget], dict[int, np.ndarray]]:
        targets = group_targets(graph.groups, float(ratio), ratios, outputs, inputs)
        explicit = {t.group.id for t in targets if any(_glob_hit(t.group.producers, p) for p in ratios)}
        scores = {t.group.id: criterion(t.group) for t in targets if not t.skipped}
        return targets, select_channels(
            targets,
            scores,
            scope=scope,
            ratio=float(ratio),
            max_layer_ratio=float(max_layer_ratio),
            round_to=round_to,
            explicit=explicit,
        )

    return _run(
        working,
        example_inputs,
        choose,
        strict=strict,
        protect_outputs=protect_outputs,
        leaf_modules=leaves,
        verify=verify,
        retry=not strict,
        notes_from=criterion,
        rules=check_rules(rules),
        ratio=float(ratio),
    )


def remove_channels(
    model: nn.Module,
    example_inputs: ExampleInputs,
    channels: Mapping[str, Sequence[int]],
    *,
    protect_outputs: bool = True,
    leaf_modules: Sequence[str] = (),
    strict: bool = False,
    inplace: bool = False,
    verify: bool = True,
    rules: Mapping[type, ChannelRule] | None = None,
) -> StructuredResult:
    """Remove exactly the given channels: ``{group name: [channel indices]}``.

    Group names are those of ``analyze_dependencies(model, example_inputs).groups`` (the module
    producing the channels). Removing every channel of a group, an unknown group or an index out
    of range raises ``ConfigError`` and leaves the model untouched.

    Example::

        result = remove_channels(model, x, {"conv1": [0, 5, 7]})
        result.model.conv1.out_channels  # 3 fewer
    """
    _check_plain_module(model)
    leaves = list(leaf_modules)
    working = model if inplace else copy.deepcopy(model)

    def choose(graph: DependencyGraph) -> tuple[list[GroupTarget], dict[int, np.ndarray]]:
        by_name = {g.name: g for g in graph.groups}
        selection: dict[int, np.ndarray] = {}
        targets = []
        for name, indices in channels.items():
            group = by_name.get(name)
            if group is None:
                raise ConfigError(f"no channel group named {name!r}; groups are {sorted(by_name)}")
            chosen = np.unique(np.asarray(list(indices), np.int64))
            if chosen.size and (chosen.min() < 0 or chosen.max() >= group.size):
                raise ConfigError(f"group {name!r} has channels 0..{group.size - 1}; got indices {chosen.tolist()}")
            if chosen.size >= group.size:
                raise ConfigError(
                    f"removing all {group.size} channels of group {name!r} would disconnect the model; keep at least one"
                )
            selection[group.id] = chosen
            targets.append(GroupTarget(group, chosen.size / group.size))
        return targets, selection

    return _run(
        working,
        example_inputs,
        choose,
        strict=strict,
        protect_outputs=protect_outputs,
        leaf_modules=leaves,
        verify=verify,
        retry=False,
        notes_from=None,
        rules=check_rules(rules),
    )


def _glob_hit(names: list[str], pattern: str) -> bool:
    return any(fnmatch.fnmatchcase(n, pattern) for n in names)


def _run(
    working: nn.Module,
    example_inputs: ExampleInputs,
    choose,
    *,
    strict: bool,
    protect_outputs: bool,
    leaf_modules: list[str],
    verify: bool,
    retry: bool,
    notes_from: Any,
    rules: dict[type, ChannelRule],
    ratio: float | None = None,
) -> StructuredResult:
    """Analyse, choose, plan, apply and verify; retry with failing ops left alone; roll back on error."""
    undo: Callable[[], None] | None = None
    opaque: set[int] = set()
    failures: list[_Failure] = []
    repairs: list[dict[str, Any]] = []
    try:
        before = None
        for _ in range(_MAX_ATTEMPTS):
            graph = analyze_dependencies(
                working,
                example_inputs,
                strict=strict,
                protect_outputs=protect_outputs,
                leaf_modules=leaf_modules,
                rules=rules,
                _opaque_ops=opaque,
            )
            before = before or measure(working, example_inputs)
            targets, selection = choose(graph)
            plan = build_plan(working, graph, selection)
            _add_attributes(plan, repairs)
            removed = graph.removed_roots(selection)
            undo = apply_plan(working, plan)
            leaves = leaf_modules + [n for n in graph.black_box_ops if n not in leaf_modules]
            failure = _verify(working, graph, removed, example_inputs, leaves) if verify else None
            if failure is None:
                break
            undo()
            undo = None
            _raise_if_rule_failed(graph, failure)
            known = {(a["module"], a["name"]) for a in plan["attributes"]}
            fresh = [r for r in size_attribute_repairs(working, graph, removed) if (r["module"], r["name"]) not in known]
            if fresh:  # sizes the forward reads from attributes: update them and try again
                repairs.extend(fresh)
                continue
            failures.append(failure)
            if not retry or failure.op_index in opaque:
                raise ConfigError(
                    f"pruning made {failure.label!r} inconsistent ({failure.detail}); the model's code probably "
                    f"uses a channel count as a literal there. Keep those channels with ignore_outputs=[...] on "
                    f"the layer producing them, or leaf_modules=[{failure.label.split(':')[0]!r}]"
                )
            opaque.add(failure.op_index)
        else:
            raise ConfigError(
                f"pruning stayed inconsistent after {_MAX_ATTEMPTS} attempts; last problem at "
                f"{failures[-1].label!r}: {failures[-1].detail}"
            )
        after = measure(working, example_inputs)
        previous = plan_of(working)
        cumulative = compose_plans(previous, plan) if previous else plan
        attach_plan(working, cumulative)
    except BaseException:
        if undo is not None:
            undo()
        raise
    records = [_group_record(t, selection) for t in targets]
    notes = [f"{f.label}: {f.detail}; its channels were kept" for f in failures]
    notes.extend(getattr(notes_from, "notes", []) or [])
    notes.extend(reason for _, reason in graph.head_problems)
    kept_whole = heads_kept_whole(graph)
    if kept_whole:
        listed = "; ".join(kept_whole[:4]) + (f" (and {len(kept_whole) - 4} more)" if len(kept_whole) > 4 else "")
        warnings.warn(
            f"{len(kept_whole)} attention product(s) keep all their heads, whose structure was not understood: {listed}; "
            "describe the module with rules={ModuleClass: ChannelRule()} or pass strict=True to stop on it",
            HeadsNotFollowedWarning,
            stacklevel=3,
        )
    ignored = {t.group.id: f"{t.group.name}: user ignore ({t.skipped})" for t in targets if t.skipped.startswith("ignore_")}
    left_alone = [(e.text.partition(": ")[0], e.reason) for e in graph.left_alone]
    left_alone += [(text.partition(": ")[0], text.partition(": ")[2]) for text in ignored.values()]
    requested = None
    if ratio is not None and ratio > 0:
        shortfall = measure_shortfall(graph, before, after, ratio, removed, ignored)
        requested = shortfall.requested
        if shortfall.short:
            warnings.warn(shortfall.message(), PruningShortfallWarning, stacklevel=3)
    report = build_report(before, after, records, _out_channels(graph, removed), graph.unsupported, notes, left_alone, requested)
    removed_names = {graph.groups[gid].name: sorted(int(i) for i in idx) for gid, idx in selection.items()}
    return StructuredResult(working, cumulative, report, removed_names)


def _add_attributes(plan: dict[str, Any], records: list[dict[str, Any]]) -> None:
    """Append attribute updates the plan does not already make."""
    known = {(a["module"], a["name"]) for a in plan["attributes"]}
    plan["attributes"].extend(dict(r) for r in records if (r["module"], r["name"]) not in known)


def _raise_if_rule_failed(graph: DependencyGraph, failure: _Failure) -> None:
    """A black-box module described by a user rule came out inconsistent: the rule is wrong, say so."""
    op = graph.trace.ops[failure.op_index]
    if op.name != "leaf_module" or op.module not in graph.black_box_ops:
        return
    module = graph.model.get_submodule(op.module)
    rule = rule_for(module, graph.rules)
    raise RuleError(
        f"rule {type(rule).__name__} for module {op.module!r} ({type(module).__name__}): after pruning, {failure.detail}; "
        "its couple() must describe every output dimension the forward computes, and shrink() must return every "
        "attribute the forward reads to size them"
    )


def _group_record(target: GroupTarget, selection: Mapping[int, np.ndarray]) -> GroupRecord:
    group = target.group
    removed = len(selection.get(group.id, ()))
    return GroupRecord(group.name, group.kind, group.producers, group.size, group.size - removed, target.ratio, target.skipped)


def _out_channels(graph: DependencyGraph, removed: np.ndarray) -> dict[str, tuple[int, int]]:
    counts: dict[str, tuple[int, int]] = {}
    for group in graph.groups:
        for member in group.members:
            if member.role == "producer" and member.module not in counts:
                atoms = graph.state.tensor_atoms[member.tensor][member.dim]
                counts[member.module] = (len(atoms), int((~removed[atoms]).sum()))
    return counts


__all__ = ["PruningShortfallWarning", "StructuredResult", "build_plan", "prune_channels", "remove_channels"]
