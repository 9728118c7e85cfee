"""The attributes code reads after a pruning: ``in_features``, ``groups``, ``num_heads``,
``split_size``, ``config.num_attention_heads`` ...

Given the model, the graph and the new tensor shapes of a plan, compute every attribute that has
to change, as plain ``{"module", "name", "old", "value"}`` records, so that applying a plan is
data-only and a saved plan can be replayed on a freshly built model.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from prunekit.errors import ConfigError
from prunekit.torch.structured.graph import DependencyGraph
from prunekit.torch.structured.labels import tensor_refs
from prunekit.torch.structured.rules.base import RuleError, Shrink
from prunekit.torch.structured.rules.modules import module_rule

HEAD_COUNT_NAMES = ("num_heads", "num_attention_heads", "n_head", "n_heads", "num_attention_heads_per_partition")
KV_HEAD_NAMES = ("num_key_value_heads", "num_kv_heads", "n_kv_heads")
INNER_SIZE_NAMES = ("all_head_size", "inner_dim", "attention_dim")
HEAD_DIM_NAMES = ("head_dim", "attention_head_size", "head_size")


def plan_attributes(
    model: nn.Module, graph: DependencyGraph, removed: np.ndarray, new_shapes: dict[str, tuple[int, ...]]
) -> list[dict[str, Any]]:
    """Every attribute update a plan needs, in a stable order (modules, attention, splits, config)."""
    modules = dict(model.named_modules())
    updates: dict[tuple[str, str], dict[str, Any]] = {}

    def put(module: str, name: str, value: Any) -> None:
        owner = _resolve(modules[module], name)
        old = getattr(owner[0], owner[1])
        if isinstance(old, tuple):
            value = tuple(value)
        if old != value and (module, name) not in updates:
            updates[(module, name)] = {"module": module, "name": name, "old": _plain(old), "value": _plain(value)}

    changed_modules = {name.rpartition(".")[0] for name in new_shapes} | set(graph.rule_modules)
    for path in sorted(changed_modules, key=list(modules).index):
        _module_attributes(path, modules[path], graph, removed, new_shapes, put)
    _norm_attributes(graph, removed, modules, put)
    attention = _attention_attributes(graph, removed, modules, put)
    _split_attributes(graph, removed, modules, put)
    _config_attributes(graph, removed, modules, attention, put)
    return list(updates.values())


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _resolve(obj: Any, dotted: str) -> tuple[Any, str]:
    *path, last = dotted.split(".")
    for part in path:
        obj = getattr(obj, part)
    return obj, last


def _module_attributes(path: str, module: nn.Module, graph: DependencyGraph, removed: np.ndarray, new_shapes: dict, put) -> None:
    """Ask the module's rule (the user's, else a built-in one) which attributes follow its new shapes."""
    rule = module_rule(module, graph.rules)
    if rule is None:
        return

    def kept(tensor: str, dim: int) -> np.ndarray | None:
        atoms = graph.state.tensor_atoms.get(tensor)
        return None if atoms is None or dim >= len(atoms) else np.nonzero(~removed[atoms[dim]])[0]

    io = None
    op = graph.black_box_ops.get(path)
    if op is not None:
        expected = graph.expected_shapes(removed)
        io = tuple(
            [tuple(expected.get(ref.vid, graph.trace.shapes[ref.vid])) for ref in tensor_refs(refs)]
            for refs in ((op.args, op.kwargs), op.outputs)
        )
    try:
        updates = rule.shrink(module, Shrink(path, module, new_shapes, kept, io))
    except ConfigError:
        raise
    except Exception as exc:
        raise RuleError(
            f"rule {type(rule).__name__} for module {path!r} ({type(module).__name__}): shrink() raised "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(updates, dict):
        raise RuleError(
            f"rule {type(rule).__name__} for module {path!r}: shrink() should return a dict of attribute -> value, "
            f"got {type(updates).__name__}"
        )
    for name, value in updates.items():
        try:
            put(path, name, value)
        except AttributeError as exc:
            raise RuleError(
                f"rule {type(rule).__name__} for module {path!r}: shrink() names attribute {name!r}, which the module does not have"
            ) from exc


def _norm_attributes(graph: DependencyGraph, removed: np.ndarray, modules: dict, put) -> None:
    for record in graph.state.norms:
        module = modules.get(record.module)
        sizes = [int((~removed[lab]).sum()) for lab in record.dims]
        if isinstance(module, (nn.LayerNorm, getattr(nn, "RMSNorm", nn.LayerNorm))):
            put(record.module, "normalized_shape", tuple(sizes))
        elif isinstance(module, nn.GroupNorm):
            put(record.module, "num_channels", sizes[0])
            groups = module.num_groups
            put(record.module, "num_groups", 1 if groups == 1 else sizes[0] // (module.num_channels // groups))


def _distinct_kept(graph: DependencyGraph, atoms: np.ndarray, removed: np.ndarray) -> tuple[int, int]:
    roots = graph.roots[atoms]
    kept = roots[~removed[atoms]]
    return len(np.unique(roots)), len(np.unique(kept))


def _attention_attributes(graph: DependencyGraph, removed: np.ndarray, modules: dict, put) -> dict[str, list]:
    """Head counts of attention modules other than ``nn.MultiheadAttention`` (handled by type)."""
    seen: dict[str, list[tuple[int, int, int, int]]] = {"heads": [], "kv": []}
    done: set[str] = set()
    for record in graph.state.attention:
        module = modules.get(record.module)
        if module is None or isinstance(module, nn.MultiheadAttention) or record.module in done:
            continue
        done.add(record.module)
        heads_old, heads_new = len(record.query_heads), int((~removed[record.query_heads]).sum())
        kv_old, kv_new = _distinct_kept(graph, record.key_heads, removed)
        if len(record.key_heads) == heads_old and kv_old == heads_old:
            kv_old, kv_new = heads_old, heads_new
        seen["heads"].append((heads_old, heads_new))
        seen["kv"].append((kv_old, kv_new))
        head_dim = next(
            (getattr(module, n) for n in HEAD_DIM_NAMES if isinstance(getattr(module, n, None), int)), record.head_dim
        )
        for name in HEAD_COUNT_NAMES:
            if _is_int(getattr(module, name, None)) and getattr(module, name) == heads_old:
                put(record.module, name, heads_new)
        for name in KV_HEAD_NAMES:
            if _is_int(getattr(module, name, None)) and getattr(module, name) == kv_old:
                put(record.module, name, kv_new)
        for name in INNER_SIZE_NAMES:
            if _is_int(getattr(module, name, None)) and getattr(module, name) == heads_old * head_dim:
                put(record.module, name, heads_new * head_dim)
    return seen


def _split_attributes(graph: DependencyGraph, removed: np.ndarray, modules: dict, put) -> None:
    for record in graph.state.splits:
        module = modules.get(record.module)
        new = int((~removed[record.section]).sum())
        if module is None or new == record.size:
            continue
        names = [n for n, v in vars(module).items() if _is_int(v) and v == record.size and not n.startswith("_")]
        if "split_size" in names:
            put(record.module, "split_size", new)
        elif len(names) == 1:
            put(record.module, names[0], new)


def _config_attributes(graph: DependencyGraph, removed: np.ndarray, modules: dict, attention: dict, put) -> None:
    configs: dict[int, str] = {}
    for path, module in modules.items():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "to_dict") and id(config) not in configs:
            configs[id(config)] = path
    if not configs:
        return
    evidence: dict[str, set[tuple[int, int]]] = {
        "num_attention_heads": set(attention.get("heads", [])),
        "num_key_value_heads": set(attention.get("kv", [])),
        "hidden_size": set(),
        "intermediate_size": set(),
    }
    for group in graph.groups:
        first = next(m for m in group.members if m.role == "producer")
        old = len(first.index)
        new = int((~_removed_positions(graph, first, removed)).sum())
        is_embedding = any(isinstance(modules.get(m.module), nn.Embedding) for m in group.members if m.role == "producer")
        if is_embedding:
            evidence["hidden_size"].add((old, new))
        elif group.kind == "channels":
            evidence["intermediate_size"].add((old, new))
    for path in configs.values():
        config = modules[path].config
        for field, pairs in evidence.items():
            current = getattr(config, field, None)
            if not _is_int(current):
                continue
            matching = {new for old, new in pairs if old == current}
            if len(matching) == 1 and current not in matching:
                put(path, f"config.{field}", matching.pop())


def _removed_positions(graph: DependencyGraph, member, removed: np.ndarray) -> np.ndarray:
    atoms = graph.state.tensor_atoms[member.tensor][member.dim]
    return removed[atoms]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
