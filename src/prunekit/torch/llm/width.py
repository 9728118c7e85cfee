"""Width pruning: remove MLP intermediate neurons and attention KV groups, physically, by activation-aware importance.

The roles of a block's projections come from its structure, not from names: a calibration pass
groups the projections fed the same tensor; the MLP's *down* projection is the lone consumer of
a width ``I != hidden`` writing ``hidden``, its *ups* are those writing ``I``; the attention's
*q/k/v* are a group of three reading the hidden states (q writes ``heads * head_dim``), its *o*
the lone projection reading ``heads * head_dim``. Importance is Wanda's, summed over a unit:
neuron ``j`` scores ``||X_j|| * ||W_down[:, j]||``, a KV group sums that over the ``o`` columns of
its query heads. Every block laid out like the most common one loses the same count (the config holds one width; others, such as MoE blocks beside dense ones, stay as they are), the config is
updated (``intermediate_size``-like key, ``num_attention_heads``, ``num_key_value_heads``,
``head_dim``) and the model reloads with ``from_pretrained``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.torch.llm.calibration import CalibrationSource
from prunekit.torch.llm.capture import call_block, capture_block_inputs, on_device
from prunekit.torch.llm.collector import StatsCollector, run_block
from prunekit.torch.llm.discovery import find_decoder_stack, is_transposed, require_whole_blocks, weight_matrix
from prunekit.torch.llm.memory import default_batch_size, resolve_device
from prunekit.torch.llm.replay import CapturedReplay
from prunekit.torch.llm.sequential import block_projections, prepare_tokens
from prunekit.torch.llm.width_config import apply_changes, narrower_config, slice_vector, text_config


@dataclass
class WidthResult:
    """What :func:`prune_width` removed: neurons and KV groups per block, and the new widths."""

    intermediate: tuple[int, int] | None = None  # (before, after)
    kv_groups: tuple[int, int] | None = None
    removed_neurons: dict[str, list[int]] = field(default_factory=dict)
    removed_groups: dict[str, list[int]] = field(default_factory=dict)
    unchanged: list[str] = field(default_factory=list)  # blocks laid out unlike the most common (MoE beside dense)

    def to_dict(self) -> dict[str, Any]:
        return {
            "intermediate": self.intermediate,
            "kv_groups": self.kv_groups,
            "removed_neurons": self.removed_neurons,
            "removed_groups": self.removed_groups,
            "unchanged": self.unchanged,
        }


@dataclass
class _Roles:
    down: str | None = None
    ups: list[str] = field(default_factory=list)
    q: str | None = None
    kv: list[str] = field(default_factory=list)
    o: str | None = None
    problems: list[str] = field(default_factory=list)
    chunks: dict[str, int] = field(default_factory=dict)  # a fused up (gate and up in one): its number of chunks


def _config_value(config: Any, *keys: str) -> int | None:
    for key in keys:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _heads(config: Any, model_name: str) -> tuple[int, int, int]:
    hidden = _config_value(config, "hidden_size", "n_embd")
    heads = _config_value(config, "num_attention_heads", "n_head")
    if hidden is None or heads is None:
        raise ConfigError(
            f"width pruning needs {model_name}'s config to say hidden_size and num_attention_heads "
            f"({type(config).__name__} does not); use depth or unstructured pruning"
        )
    kv = _config_value(config, "num_key_value_heads") or heads
    head_dim = _config_value(config, "head_dim") or hidden // heads
    return heads, kv, head_dim


def _roles(modules: Mapping[str, nn.Module], owner: Mapping[str, str], hidden: int, heads: int, head_dim: int) -> _Roles:
    groups: dict[str, list[str]] = {}
    for name in modules:
        groups.setdefault(owner.get(name, name), []).append(name)
    shape = {n: tuple(weight_matrix(m).shape) for n, m in modules.items()}  # (out, in)
    roles = _Roles()
    alone = [g[0] for g in groups.values() if len(g) == 1]
    downs = [n for n in alone if shape[n][0] == hidden and shape[n][1] != hidden and shape[n][1] != heads * head_dim]
    if len(downs) == 1:
        roles.down = downs[0]
        width = shape[roles.down][1]
        roles.ups = [n for n in modules if shape[n] == (width, hidden)]
        fused = [
            n
            for n in alone
            if n != roles.down and shape[n][1] == hidden and shape[n][0] % width == 0 and shape[n][0] // width > 1
        ]
        lone = len(roles.ups) == 1 and roles.ups[0] in alone  # a non-gated up, or a fused q/k/v of the same width
        if (not roles.ups or lone) and len(fused) == 1:  # gate and up in one projection: chunks of the MLP width
            # (a wrong pick is caught before any change: the config rebuild and the silenced-neuron oracle)
            roles.ups, roles.chunks = fused, {fused[0]: shape[fused[0]][0] // width}
        if not roles.ups:
            roles.problems.append(f"no projection writes the MLP width {width} read by {roles.down!r}")
    else:
        roles.problems.append(f"found {len(downs)} candidate MLP down projections")
    qkv = [g for g in groups.values() if len(g) == 3 and all(shape[n][1] == hidden for n in g)]
    if len(qkv) == 1:
        group = qkv[0]
        roles.q = next((n for n in group if shape[n][0] == heads * head_dim), None)
        roles.kv = [n for n in group if n != roles.q]
        roles.o = next((n for n in alone if shape[n] == (hidden, heads * head_dim) and n != roles.down), None)
        if roles.q is None or roles.o is None:
            roles.problems.append("could not tell q and o among the attention projections")
    else:
        fused = [
            n
            for n in modules
            if shape[n][1] == hidden and shape[n][0] % (heads * head_dim) == 0 and shape[n][0] // (heads * head_dim) > 1
        ]
        roles.problems.append(f"attention uses a fused q/k/v projection {fused[:1]} (not separate q, k, v)")
    return roles


def _slice(module: nn.Module, keep: torch.Tensor, dim: str) -> None:
    """Keep output rows (``dim="out"``) or input columns (``"in"``) ``keep`` of a projection, in place."""
    transposed = is_transposed(module)
    weight = module.weight.data
    with torch.no_grad():
        if dim == "out":
            new = weight[:, keep] if transposed else weight[keep]
            if getattr(module, "bias", None) is not None:
                module.bias = nn.Parameter(module.bias.data[keep].clone())
        else:
            new = weight[keep] if transposed else weight[:, keep]
        module.weight = nn.Parameter(new.clone())
    if transposed:
        module.nf = int(new.shape[1])
    else:
        module.in_features, module.out_features = int(new.shape[1]), int(new.shape[0])


def _score_columns(module: nn.Module, norms: torch.Tensor) -> torch.Tensor:
    weight = weight_matrix(module).detach().float()
    return norms.to(weight.device) * weight.norm(dim=0)


def prune_width(
    model: nn.Module,
    calibration: CalibrationSource,
    *,
    tokenizer: Any = None,
    mlp: float = 0.0,
    heads: float = 0.0,
    n_samples: int = 32,
    seq_len: int = 512,
    seed: int = 0,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
) -> WidthResult:
    """Remove a fraction ``mlp`` of every block's MLP neurons and ``heads`` of its KV groups (with their query heads).

    Example::

        prune_width(model, "train.txt", tokenizer=tok, mlp=0.25, heads=0.25)
        model.config.intermediate_size  # 3/4 of before
    """
    for what, value in (("mlp", mlp), ("heads", heads)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"width fraction {what} must be in [0, 1), got {value}")
    if mlp == 0.0 and heads == 0.0:
        raise ConfigError("give a fraction of MLP neurons (mlp) and/or of attention KV groups (heads) to remove")
    name = type(model).__name__
    require_whole_blocks(model, find_decoder_stack(model), "width pruning")
    config = text_config(getattr(model, "config", None))
    hidden = _config_value(config, "hidden_size", "n_embd")
    n_heads, n_kv, head_dim = _heads(config, name)
    if heads and not _config_describes_fewer_heads(model, n_heads, n_kv, head_dim):
        raise ConfigError(
            f"{name}'s config ({type(config).__name__}) cannot describe fewer heads of the same size (its attention "
            "derives head_dim from hidden_size / heads or fuses q/k/v), so the model would not reload; "
            "prune MLP neurons only (heads=0)"
        )
    work_device = resolve_device(device)
    stack = find_decoder_stack(model)
    tokens = prepare_tokens(model, calibration, tokenizer, n_samples, seq_len, seed)
    batch_size = batch_size or default_batch_size(model, stack, tokens.shape[0], tokens.shape[1])
    batches = capture_block_inputs(model, stack, tokens, batch_size)
    if work_device is not None:
        batches = [b.to(work_device) for b in batches]
    replay = CapturedReplay(batches)
    result = WidthResult()
    group_size = n_heads // n_kv
    drop_groups = int(round(heads * n_kv))
    if heads and not 1 <= drop_groups < n_kv:
        raise ConfigError(
            f"removing {heads:.0%} of {n_kv} KV groups rounds to {drop_groups}; choose a fraction that "
            f"removes between 1 and {n_kv - 1}"
        )
    changes: list[tuple[int, str, Any]] = []
    extra: dict[str, str] = {}
    layouts = [{n: tuple(p.shape) for n, p in block.named_parameters()} for block in stack.blocks]
    common = max(layouts, key=layouts.count)
    same = [i for i, layout in enumerate(layouts) if layout == common]  # the blocks the config's one width describes
    for index, block in enumerate(stack.blocks):
        modules = block_projections(stack, index)
        if index not in same:
            result.unchanged.append(stack.block_name(index))
            with on_device(block, work_device):
                run_block(block, index, replay, None, None, replace=True)
            continue
        with on_device(block, work_device):
            collector = StatsCollector(modules, hessian=False)
            try:
                run_block(block, index, replay, None, collector, replace=False)
            finally:
                collector.close()
            assert hidden is not None
            roles = _roles(modules, collector.owner, hidden, n_heads, head_dim)
            if roles.problems and (
                (mlp and (roles.down is None or not roles.ups)) or (heads and (roles.o is None or roles.q is None))
            ):
                raise ConfigError(
                    f"width pruning of {name} block {stack.block_name(index)!r}: " + "; ".join(roles.problems) + "; "
                    "prune the other part only (mlp=0 or heads=0), or use depth or unstructured pruning"
                )
            plan = _Plan(roles=roles)
            if mlp:
                assert roles.down is not None
                down = modules[roles.down]
                width = weight_matrix(down).shape[1]
                drop = int(round(mlp * width))
                if not 1 <= drop < width:
                    raise ConfigError(f"removing {mlp:.0%} of {width} MLP neurons rounds to {drop}; choose another fraction")
                scores = _score_columns(down, collector.stats[roles.down].input_norms())
                removed = torch.topk(scores, drop, largest=False).indices.sort().values
                dropped = set(removed.tolist())
                plan.keep["mlp"] = torch.tensor([j for j in range(width) if j not in dropped])
                plan.width = width
                result.removed_neurons[stack.block_name(index)] = removed.tolist()
                result.intermediate = (width, width - drop)
            if heads:
                assert roles.o is not None
                o = modules[roles.o]
                scores = _score_columns(o, collector.stats[roles.o].input_norms()).reshape(n_kv, group_size * head_dim).sum(1)
                gone = torch.topk(scores, drop_groups, largest=False).indices.sort().values.tolist()
                kept_groups = [g for g in range(n_kv) if g not in gone]
                plan.keep["kv"] = torch.tensor([g * head_dim + d for g in kept_groups for d in range(head_dim)])
                plan.keep["q"] = torch.tensor(
                    [(g * group_size + h) * head_dim + d for g in kept_groups for h in range(group_size) for d in range(head_dim)]
                )
                result.removed_groups[stack.block_name(index)] = gone
                result.kv_groups = (n_kv, n_kv - drop_groups)
            if index == same[0]:  # before any weight changes: the config must describe the result, and the block must run
                changes, extra = _check_plan(
                    model, stack, same, block, modules, plan, batches, result, n_kv - drop_groups, group_size, head_dim
                )
            _apply(block, modules, plan, extra)
            if index + 1 < len(stack.blocks):
                run_block(block, index, replay, None, None, replace=True)
    apply_changes(model.config, changes)
    if heads:
        for module in model.modules():  # attention modules that cached their head counts
            for key, value in (("num_heads", config.num_attention_heads), ("num_key_value_heads", n_kv - drop_groups)):
                if isinstance(getattr(module, key, None), int) and module is not model:
                    setattr(module, key, value)
    return result


@dataclass
class _Plan:
    """What one block loses: its projection roles and the kept indices per set (``"mlp"``, ``"q"``, ``"kv"``)."""

    roles: _Roles
    keep: dict[str, torch.Tensor] = field(default_factory=dict)
    width: int = 0  # the MLP width before


def _apply(block: nn.Module, modules: Mapping[str, nn.Module], plan: _Plan, extra: Mapping[str, str]) -> None:
    """Slice the block's projections (and the extra per-feature vectors) to the plan, in place."""
    roles = plan.roles
    if "mlp" in plan.keep:
        assert roles.down is not None
        for up in roles.ups:
            rows = torch.cat([plan.keep["mlp"] + chunk * plan.width for chunk in range(roles.chunks.get(up, 1))])
            _slice(modules[up], rows.to(modules[up].weight.device), "out")
        _slice(modules[roles.down], plan.keep["mlp"].to(modules[roles.down].weight.device), "in")
    if "q" in plan.keep:
        assert roles.q is not None and roles.o is not None
        device = modules[roles.o].weight.device
        _slice(modules[roles.q], plan.keep["q"].to(device), "out")
        for kv in roles.kv:
            _slice(modules[kv], plan.keep["kv"].to(device), "out")
        _slice(modules[roles.o], plan.keep["q"].to(device), "in")
    parameters = dict(block.named_parameters())
    for param, which in extra.items():
        if param in parameters:
            slice_vector(block, param, plan.keep[which])


def _check_plan(
    model: nn.Module,
    stack: Any,
    same: list[int],
    block: nn.Module,
    modules: Mapping[str, nn.Module],
    plan: _Plan,
    batches: list[Any],
    result: WidthResult,
    kv_left: int,
    group_size: int,
    head_dim: int,
) -> tuple[list[tuple[int, str, Any]], dict[str, str]]:
    """Plan the first block to prune on a copy: the config changes that rebuild it, the extra vectors to slice;
    the copy must run."""
    index = same[0]
    trial = copy.deepcopy(block)
    prefix = f"{stack.block_name(index)}."
    trial_modules = dict(trial.named_modules())
    trial_projections = {n: trial_modules[n[len(prefix) :]] for n in modules}
    _apply(trial, trial_projections, plan, {})
    owned = {f"{n[len(prefix) :]}.{p}" for n in modules for p, _ in trial_projections[n].named_parameters()}
    planned = {p: tuple(v.shape) for p, v in trial.named_parameters() if p in owned}
    heads: dict[str, int] = {}
    vectors: dict[tuple[int, int], str] = {}
    if result.intermediate:
        vectors[result.intermediate] = "mlp"
    if "q" in plan.keep:
        heads = {"num_attention_heads": kv_left * group_size, "head_dim": head_dim}
        if hasattr(text_config(model.config), "num_key_value_heads"):
            heads["num_key_value_heads"] = kv_left
        q_before = int(weight_matrix(modules[plan.roles.o]).shape[1]) if plan.roles.o else 0
        vectors[(q_before, int(plan.keep["q"].numel()))] = "q"
        vectors.setdefault((q_before // group_size, int(plan.keep["kv"].numel())), "kv")
    changes, extra = narrower_config(model, planned, result.intermediate, heads, vectors, [stack.block_name(i) for i in same])
    for param, which in extra.items():
        slice_vector(trial, param, plan.keep[which])
    try:
        with torch.no_grad():
            narrowed = call_block(trial, batches[0], index)
    except Exception as exc:
        raise ConfigError(
            f"width pruning would break {type(model).__name__} block {stack.block_name(index)!r} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]}): a module between its projections holds the "
            "old width; prune the other part only (mlp=0 or heads=0), or use depth or unstructured pruning"
        ) from exc
    if extra:  # a norm over the sliced width renormalises what is left: no silenced copy can match it exactly
        return changes, extra
    with torch.no_grad():
        expected = call_block(_silenced(block, prefix, modules, plan), batches[0], index)
    if not torch.allclose(narrowed, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()) + 1e-6):
        raise ConfigError(
            f"width pruning would change {type(model).__name__} block {stack.block_name(index)!r}'s outputs beyond the "
            "removed neurons/heads (its projections are not laid out as found, e.g. an interleaved fused gate/up); "
            "prune the other part only (mlp=0 or heads=0), or use depth or unstructured pruning"
        )
    return changes, extra


def _silenced(block: nn.Module, prefix: str, modules: Mapping[str, nn.Module], plan: _Plan) -> nn.Module:
    """A copy of ``block`` whose removed neurons and heads contribute nothing (their down / o columns zeroed): the
    oracle the narrowed block must match."""
    copy_ = copy.deepcopy(block)
    named = dict(copy_.named_modules())
    with torch.no_grad():
        for role, which, width in ((plan.roles.down, "mlp", plan.width), (plan.roles.o, "q", 0)):
            if which not in plan.keep or role is None:
                continue
            matrix = weight_matrix(named[role[len(prefix) :]])
            gone = torch.ones(width or matrix.shape[1], dtype=torch.bool)
            gone[plan.keep[which]] = False
            matrix[:, gone.to(matrix.device)] = 0
    return copy_


def _config_describes_fewer_heads(model: nn.Module, heads: int, kv: int, head_dim: int) -> bool:
    """Whether a config with one KV group fewer (``head_dim`` fixed) builds narrower q/k/v/o projections (checked on ``meta``)."""
    if kv < 2 or heads % kv:
        return False
    config = copy.deepcopy(model.config)
    target = text_config(config)
    target.num_attention_heads = heads - heads // kv
    if hasattr(target, "num_key_value_heads"):
        target.num_key_value_heads = kv - 1
    target.head_dim = head_dim
    try:
        with torch.device("meta"):
            fresh = type(model)(config)
    except Exception:  # noqa: BLE001 - any refusal of the config means "cannot describe"
        return False
    old = sorted(tuple(weight_matrix(m).shape) for m in block_projections(find_decoder_stack(model), 0).values())
    fresh_stack = find_decoder_stack(fresh)
    new = sorted(tuple(weight_matrix(m).shape) for m in block_projections(fresh_stack, 0).values())
    shrunk = [a for a, b in zip(old, new, strict=False) if a != b]
    return bool(shrunk) and sum(a[0] * a[1] for a in new) < sum(a[0] * a[1] for a in old)
