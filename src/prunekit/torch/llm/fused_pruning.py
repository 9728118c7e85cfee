"""Fused expert tensors in a pruning run: each slice's target, pruning the slices a block's forward showed to be
per-expert projections, and the report of what stayed dense (the driver is :mod:`prunekit.torch.llm.sequential`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prunekit.torch.llm.discovery import DecoderStack, weight_matrix
from prunekit.torch.llm.experts import (
    ExpertUses,
    expert_matrix,
    expert_slice_name,
    fused_candidates,
    set_expert_matrix,
    stacked_matrices,
)
from prunekit.torch.llm.methods import LayerTask, LLMMethod, unreached_method


def has_fused(stack: DecoderStack) -> bool:
    """Whether any block holds a stack of matrices outside its projections (fused experts, maybe)."""
    return any(
        stacked_matrices(p)
        for i, block in enumerate(stack.blocks)
        for p in fused_candidates(block, owned_weights(stack, i)).values()
    )


def owned_weights(stack: DecoderStack, index: int) -> set[str]:
    """Block ``index``'s projection weights by block-relative name (``"mlp.up_proj.weight"``)."""
    return {f"{name}.weight" for name in stack.projections[index]}


def weight_numel(model: nn.Module, name: str) -> int:
    """The number of weights of a pruned projection or expert slice (``...experts.down_proj[5]``)."""
    if name.endswith("]"):
        param, _, expert = name[:-1].rpartition("[")
        return model.get_parameter(param)[int(expert)].numel()
    try:
        return weight_matrix(model.get_submodule(name)).numel()
    except AttributeError:  # a 2-D parameter used as a projection (a router's weight)
        return model.get_parameter(name).numel()


def dense_weights(stack: DecoderStack, plan: ExpertPlan) -> dict[str, Any]:
    """The blocks' weight tensors (2-D and up) that are neither a projection nor pruned per expert, so no LLM
    method prunes them: fused expert tensors used some other way, state-space convolutions... by block-relative
    name, with their share of all block weights (``{}`` when every weight is pruned). Stacked per-expert biases
    (``plan.vectors``) are no weights."""
    total, dense = 0, Counter[str]()
    for index, block in enumerate(stack.blocks):
        owned = owned_weights(stack, index)
        for name, param in block.named_parameters():
            qualified = f"{stack.block_name(index)}.{name}"
            if param.dim() < 2 or qualified in plan.vectors:
                continue
            total += param.numel()
            if name not in owned and qualified not in plan.pruned:
                dense[name] += param.numel()
    if not dense:
        return {}
    return {"dense_weights": dict(dense), "dense_weight_share": sum(dense.values()) / total}


@dataclass
class ExpertPlan:
    """Fused expert tensors: each slice's target (``None``: skipped), and what was pruned or found to be a stacked bias."""

    target: Callable[[str, int], float | None]
    targets: dict[str, float] = field(default_factory=dict)
    input_dims: dict[str, int] = field(default_factory=dict)
    pruned: set[str] = field(default_factory=set)
    vectors: set[str] = field(default_factory=set)


def note_restored_experts(
    block_name: str, fused: Mapping[str, nn.Parameter], uses: ExpertUses, plan: ExpertPlan, achieved: Mapping[str, float]
) -> None:
    """Record in ``plan`` the fused tensors a restored block had pruned per expert (their slices are in ``achieved``)."""
    for name, stored_in_out in uses.pruneable().items():
        qualified = f"{block_name}.{name}"
        slices = [expert_slice_name(qualified, e) for e in range(fused[name].shape[0])] if fused[name].dim() == 3 else [qualified]
        if any(n in achieved for n in slices):
            plan.input_dims[qualified] = 0 if stored_in_out else 1
        if all(n in achieved for n in slices):
            plan.pruned.add(qualified)
    plan.vectors.update(f"{block_name}.{name}" for name in uses.vectors())


@dataclass
class ExpertRun:
    """What pruning one block's expert slices shares with its projections: the method and where results go."""

    handler: LLMMethod
    options: Mapping[str, Any]
    statistics: str
    pattern: tuple[int, int] | None
    comparison: str | None
    achieved: dict[str, float]
    chosen: dict[str, str]
    unreached: list[str]


def prune_experts(
    run: ExpertRun, block_name: str, index: int, fused: Mapping[str, nn.Parameter], uses: ExpertUses, plan: ExpertPlan
) -> None:
    """Prune every expert slice of the block's fused tensors used as per-expert projections, each as its own
    projection; an expert no calibration token reached is pruned by magnitude and listed in ``unreached``."""
    for name, stored_in_out in uses.pruneable().items():
        param = fused[name]
        qualified = f"{block_name}.{name}"
        skipped = False
        experts: list[int | None] = list(range(param.shape[0])) if param.dim() == 3 else [None]
        for expert in experts:
            slice_name = qualified if expert is None else expert_slice_name(qualified, expert)
            target = plan.target(slice_name, index)
            stats = uses.stats.pop((name, expert), None)
            if target is None:
                skipped = True
                continue
            plan.targets[slice_name] = target
            use, group = run.handler, run.comparison
            if run.statistics != "none" and stats is None:
                run.unreached.append(slice_name)
                use, group = unreached_method(run.handler), None if run.comparison == "auto" else run.comparison
            if not (target == 0.0 and run.pattern is None):
                weight = expert_matrix(param, expert, stored_in_out).detach().float()
                task = LayerTask(slice_name, weight, stats, target, run.pattern, group)
                pruned, run.chosen[slice_name] = use.prune_with_group(task, **run.options)
                set_expert_matrix(param, expert, stored_in_out, pruned)
            run.achieved[slice_name] = zero_share(expert_matrix(param, expert, stored_in_out))
        plan.input_dims[qualified] = 0 if stored_in_out else 1
        if not skipped:
            plan.pruned.add(qualified)
    plan.vectors.update(f"{block_name}.{name}" for name in uses.vectors())


def zero_share(weight: torch.Tensor) -> float:
    """The share of zeros in ``weight`` (a projection's or an expert slice's achieved sparsity)."""
    return float((weight == 0).sum()) / weight.numel()
