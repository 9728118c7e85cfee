"""One-shot pruning of a causal LM, block by block within memory (the SparseGPT recipe).

The calibration tokens go through the embeddings once; then, for each decoder block in turn:
its inputs (and the mask / positions / rotary inputs it needs) are on hand, a pass through the
block collects each projection's input statistics, every projection is pruned, and a second
pass recomputes the block's outputs with the pruned weights, which become the next block's
inputs. Peak memory is the model plus one block's calibration activations.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.methods.llm_options import COMPARISON_CHOICES, RATIO_SCHEMES
from prunekit.torch.llm.calibration import CalibrationSource, calibration_tokens
from prunekit.torch.llm.capture import on_device
from prunekit.torch.llm.checkpoint import BlockCheckpoint
from prunekit.torch.llm.collector import StatsCollector, run_block
from prunekit.torch.llm.discovery import DecoderStack, find_decoder_stack, set_weight_matrix, weight_matrix
from prunekit.torch.llm.experts import ExpertUses, fused_candidates, stacked_matrices
from prunekit.torch.llm.fused_pruning import (
    ExpertPlan,
    ExpertRun,
    dense_weights,
    has_fused,
    note_restored_experts,
    owned_weights,
    prune_experts,
    weight_numel,
    zero_share,
)
from prunekit.torch.llm.memory import check_memory, default_batch_size, resolve_device
from prunekit.torch.llm.methods import LayerTask, LLMMethod, needed_statistics, unreached_method
from prunekit.torch.llm.progress import block_progress
from prunekit.torch.llm.ratios import glob_sparsities, outlier_ratio, owl_sparsities
from prunekit.torch.llm.replay import BlockReplay, block_replay
from prunekit.torch.llm.selection import check_sparsity, parse_pattern
from prunekit.torch.llm.statistics import InputStatistics


@dataclass
class PruneResult:
    """What :func:`prune` did: the recipe, per-layer target and achieved sparsity, and the time taken.

    ``comparisons`` names the comparison group each projection pruned in this run was chosen in
    (``"row"``/``"layer"``; with ``comparison="auto"`` it differs per layer). ``extra`` holds
    ``unreached`` (projections and expert slices no calibration token reached, pruned by magnitude),
    ``fused_input_dims`` (for each fused expert tensor pruned per slice, e.g.
    ``"model.layers.0.mlp.experts.down_proj"``, the dim of ``param[e]`` its inputs run along: 1 for
    ``linear(x, W[e])``, 0 for ``x @ W[e]``; a 2-D router weight pruned whole is listed the same way) and
    ``dense_weights`` / ``dense_weight_share`` (block weights neither a ``Linear``/``Conv1D`` nor a
    fused tensor used per expert as a projection, left dense). ``to_dict()`` is the JSON saved beside a
    pruned model.
    """

    recipe: dict[str, Any]
    targets: dict[str, float]
    achieved: dict[str, float]
    seconds: float
    params_pruned: int = 0
    zeros: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    comparisons: dict[str, str] = field(default_factory=dict)

    @property
    def sparsity(self) -> float:
        """The share of zeros over all pruned projections' weights."""
        return self.zeros / self.params_pruned if self.params_pruned else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: recipe, overall and per-layer sparsity, seconds."""
        return {
            "recipe": self.recipe,
            "sparsity": self.sparsity,
            "seconds": self.seconds,
            "layers": {name: self._layer_record(name) for name in self.achieved},
            **self.extra,
        }

    def _layer_record(self, name: str) -> dict[str, Any]:
        record: dict[str, Any] = {"target": self.targets[name], "sparsity": self.achieved[name]}
        if name in self.comparisons:
            record["comparison"] = self.comparisons[name]
        return record


def resolve_method(method: str | LLMMethod, options: Mapping[str, Any]) -> tuple[str, LLMMethod, dict[str, Any]]:
    """``(name, handler, options)`` for a registry name (kind ``"llm"``) or an :class:`LLMMethod` given directly."""
    if isinstance(method, LLMMethod):
        return getattr(method.prune, "__name__", "custom").lstrip("_"), method, dict(options)
    from prunekit.methods import get_method

    record = get_method(str(method), kind="llm", framework="torch")
    return record.name, record.handler("torch"), record.options("torch", **options)


def context_length(model: nn.Module) -> int | None:
    """The model's maximum context (``max_position_embeddings`` / ``n_positions``) from its config, if it says."""
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _vocab_size(model: nn.Module) -> int | None:
    value = getattr(getattr(model, "config", None), "vocab_size", None)
    return value if isinstance(value, int) else None


def _skipped(name: str, skip: Sequence[str]) -> bool:
    parts = name.split(".")
    prefixes = [".".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatchcase(prefix, glob) for glob in skip for prefix in prefixes)


def _check_skip(model: nn.Module, skip: Sequence[str]) -> None:
    names = [name for name, _ in model.named_modules() if name] + [name for name, p in model.named_parameters() if p.dim() == 3]
    for glob in skip:
        if not any(_skipped(name, [glob]) for name in names):
            raise ConfigError(f"skip glob {glob!r} matches no module of the model (names look like {names[:4]})")


def prepare_tokens(
    model: nn.Module, calibration: CalibrationSource, tokenizer: Any, n_samples: int, seq_len: int, seed: int
) -> torch.Tensor:
    """Calibration tokens with ``seq_len`` clipped to the model's context and ids checked against its vocabulary."""
    limit = context_length(model)
    if limit is not None:
        seq_len = min(seq_len, limit)
    return calibration_tokens(
        calibration, tokenizer, n_samples=n_samples, seq_len=seq_len, seed=seed, vocab_size=_vocab_size(model)
    )


def block_projections(stack: DecoderStack, index: int) -> dict[str, nn.Module]:
    """Block ``index``'s projections by their qualified model names."""
    block = stack.blocks[index]
    modules = dict(block.named_modules())
    return {f"{stack.block_name(index)}.{name}": modules[name] for name in stack.projections[index]}


def owl_block_sparsities(
    model: nn.Module,
    stack: DecoderStack,
    tokens: torch.Tensor,
    sparsity: float,
    *,
    lam: float = 0.08,
    threshold: float = 5.0,
    batch_size: int = 4,
    device: torch.device | None = None,
    skip: Sequence[str] = (),
) -> list[float]:
    """OWL's per-block sparsities from a dense sequential pass over the calibration tokens.

    Example::

        owl_block_sparsities(model, find_decoder_stack(model), tokens, 0.7)
    """
    replay = block_replay(model, stack, tokens, batch_size)
    ratios = []
    for index, block in enumerate(stack.blocks):
        modules = {n: m for n, m in block_projections(stack, index).items() if not _skipped(n, skip)}
        with on_device(block, device):
            collector = StatsCollector(modules, hessian=False, stop_early=False)  # the next block needs its outputs
            try:
                run_block(block, index, replay, device, collector, replace=True)
            finally:
                collector.close()
            scores = [
                weight_matrix(m).detach().float().abs() * collector.stats[n].input_norms().to(m.weight.device)
                for n, m in modules.items()
                if n in collector.stats
            ]
        ratios.append(outlier_ratio(scores, threshold) if scores else 0.0)
    return owl_sparsities(ratios, sparsity, lam)


def prune(
    model: nn.Module,
    calibration: CalibrationSource | None = None,
    *,
    method: str | LLMMethod,
    tokenizer: Any = None,
    sparsity: float = 0.5,
    pattern: str | tuple[int, int] | None = None,
    comparison: str | None = None,
    ratios: str | Mapping[str, float] = "uniform",
    skip: Sequence[str] = (),
    n_samples: int = 128,
    seq_len: int = 2048,
    seed: int = 0,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    owl_lambda: float = 0.08,
    owl_threshold: float = 5.0,
    progress: bool = False,
    options: Mapping[str, Any] | None = None,
    checkpoint: BlockCheckpoint | None = None,
) -> PruneResult:
    """Prune ``model``'s decoder blocks in place, one block at a time, and return what was done.

    ``method`` is a registry name of kind ``"llm"`` (``prunekit methods``) or an
    :class:`~prunekit.torch.llm.methods.LLMMethod`; ``pattern`` ``"2:4"``/``"4:8"`` gives N:M
    sparsity (then ``sparsity`` is ``1 - N/M``); ``comparison`` ``"row"``/``"layer"`` overrides the
    method's comparison group, and ``"auto"`` picks per projection whichever of the two reconstructs
    its calibration outputs better (this collects ``X X^T`` per projection, as SparseGPT does); ``ratios`` is ``"uniform"``, ``"owl"`` or ``{glob: sparsity}``;
    ``skip`` globs name projections or blocks left dense; ``device="cuda"`` moves one block at
    a time to the GPU; ``checkpoint`` (a :class:`~prunekit.torch.llm.checkpoint.BlockCheckpoint`)
    saves the finished blocks so a killed run resumes at the next one. Every argument is checked
    before any work.

    Example::

        result = prune(model, "train.txt", tokenizer=tok, method=name, sparsity=0.5, n_samples=32, seq_len=512)
        result.sparsity  # 0.5
    """
    started = time.perf_counter()
    parsed = parse_pattern(pattern)
    sparsity = 1.0 - parsed[0] / parsed[1] if parsed is not None else check_sparsity(sparsity)
    name, handler, method_options = resolve_method(method, options or {})
    if comparison is not None and comparison not in COMPARISON_CHOICES:
        raise ConfigError(f"comparison must be one of {', '.join(COMPARISON_CHOICES)}, got {comparison!r}")
    if isinstance(ratios, str) and ratios not in RATIO_SCHEMES:
        raise ConfigError(f"ratios must be one of {', '.join(RATIO_SCHEMES)} or a dict of glob -> sparsity, got {ratios!r}")
    if parsed is not None and ratios != "uniform":
        raise ConfigError(f"an N:M pattern fixes every layer's sparsity at {sparsity:g}; use ratios='uniform' with it")
    skip = list(skip)
    _check_skip(model, skip)
    work_device = resolve_device(device)
    stack = find_decoder_stack(model)
    if stack.parallel and work_device is not None:
        raise ConfigError(
            f"device={device!r} moves one block at a time, but {type(model).__name__} splits its layers over the parallel "
            f"lists {', '.join(repr(n) for n in stack.lists)}, which only its own forward can run: move the model to the "
            "device and leave device unset"
        )
    all_names = [n for i in range(len(stack.blocks)) for n in stack.projection_names(i)]
    names = [n for n in all_names if not _skipped(n, skip)]
    if isinstance(ratios, Mapping):  # a glob may name fused expert tensors only: they are checked with the projections
        fused_names = [
            f"{stack.block_name(i)}.{n}"
            for i, block in enumerate(stack.blocks)
            for n, p in block.named_parameters()
            if p.dim() == 3
        ]
        projections = set(names)
        targets = {n: v for n, v in glob_sparsities(names + fused_names, ratios, sparsity).items() if n in projections}
    else:
        targets = dict.fromkeys(names, sparsity)
    if parsed is not None:
        modules = dict(model.named_modules())
        for n in names:
            cols = weight_matrix(modules[n]).shape[1]
            if cols % parsed[1]:
                raise ConfigError(
                    f"pattern {parsed[0]}:{parsed[1]} does not divide layer {n!r}'s {cols} input features; "
                    f"add it to skip or use another M"
                )
        _check_fused_pattern(stack, parsed, skip)
    statistics = needed_statistics(handler, comparison, parsed)
    fused = has_fused(stack)
    needs_data = statistics != "none" or ratios == "owl" or (fused and calibration is not None)
    tokens = None
    if needs_data:
        if calibration is None:
            raise ConfigError(f"method {name!r} needs calibration data: a text file, a list of strings or token ids")
        tokens = prepare_tokens(model, calibration, tokenizer, n_samples, seq_len, seed)
        batch_size = batch_size or default_batch_size(model, stack, tokens.shape[0], tokens.shape[1])
        check_memory(model, stack, tokens.shape, batch_size, hessian=statistics == "hessian", device=work_device, experts=fused)
    identity = {
        "method": name,
        "options": _jsonable(method_options),
        "sparsity": sparsity,
        "pattern": list(parsed) if parsed else None,
        "comparison": comparison,
        "ratios": ratios if isinstance(ratios, str) else dict(ratios),
        "skip": skip,
        "tokens": None if tokens is None else hashlib.sha256(tokens.cpu().numpy().tobytes()).hexdigest(),
        "batch_size": batch_size,
        "shapes": [list(t.shape) for t in model.state_dict().values()],
    }
    done, saved_targets, achieved = checkpoint.restore(list(stack.blocks), identity) if checkpoint else (0, {}, {})
    was_training = model.training
    model.eval()
    try:
        if done:
            targets = saved_targets  # OWL's ratios came from the dense model, which is gone now
        elif ratios == "owl":
            assert tokens is not None and batch_size is not None
            block_sparsity = owl_block_sparsities(
                model,
                stack,
                tokens,
                sparsity,
                lam=owl_lambda,
                threshold=owl_threshold,
                batch_size=batch_size,
                device=work_device,
                skip=skip,
            )
            for i, value in enumerate(block_sparsity):
                for n in stack.projection_names(i):
                    if n in targets:
                        targets[n] = value
        block_sparsity = [  # a fused tensor's slices take their block's target (OWL's, or a restored run's)
            next((targets[n] for n in stack.projection_names(i) if n in targets), sparsity) for i in range(len(stack.blocks))
        ]

        def expert_target(slice_name: str, block: int) -> float | None:
            param = slice_name.rpartition("[")[0] or slice_name
            if _skipped(slice_name, skip) or _skipped(param, skip):
                return None
            if isinstance(ratios, Mapping):
                return next((v for g, v in ratios.items() if fnmatchcase(slice_name, g) or fnmatchcase(param, g)), sparsity)
            return block_sparsity[block]

        resume = _Resume(checkpoint, identity, done, achieved) if checkpoint else None
        unreached: list[str] = []
        plan = ExpertPlan(expert_target)
        achieved, chosen = _prune_blocks(
            model,
            stack,
            handler,
            statistics,
            method_options,
            tokens,
            batch_size,
            targets,
            parsed,
            comparison,
            work_device,
            progress,
            name,
            unreached,
            resume,
            plan,
        )
    finally:
        model.train(was_training)
    if checkpoint is not None:
        checkpoint.finish()
    targets = {**targets, **plan.targets}
    sizes = {n: weight_numel(model, n) for n in achieved}
    params = sum(sizes.values())
    zeros = sum(round(achieved[n] * sizes[n]) for n in achieved)
    recipe = {
        "method": name,
        "options": _jsonable(method_options),
        "sparsity": sparsity,
        "pattern": f"{parsed[0]}:{parsed[1]}" if parsed else None,
        "comparison": comparison or handler.comparison,
        "ratios": ratios if isinstance(ratios, str) else dict(ratios),
        "skip": skip,
        "n_samples": int(tokens.shape[0]) if tokens is not None else 0,
        "seq_len": int(tokens.shape[1]) if tokens is not None else 0,
        "seed": seed,
    }
    return PruneResult(
        recipe=recipe,
        targets=targets,
        achieved=achieved,
        seconds=time.perf_counter() - started,
        params_pruned=params,
        zeros=zeros,
        comparisons=chosen,
        extra={
            **({"unreached": unreached} if unreached else {}),
            **({"fused_input_dims": plan.input_dims} if plan.input_dims else {}),
            **dense_weights(stack, plan),
        },
    )


def _check_fused_pattern(stack: DecoderStack, pattern: tuple[int, int], skip: Sequence[str]) -> None:
    """Refuse, before any work, an N:M pattern that does not divide both sides of a fused 3-D tensor (which side
    is the input is learned only while the blocks run)."""
    for index, block in enumerate(stack.blocks):
        for name, param in fused_candidates(block, owned_weights(stack, index)).items():
            qualified = f"{stack.block_name(index)}.{name}"
            if stacked_matrices(param) and not _skipped(qualified, skip) and any(side % pattern[1] for side in param.shape[1:]):
                raise ConfigError(
                    f"pattern {pattern[0]}:{pattern[1]} does not divide both sides {tuple(param.shape[1:])} of the fused "
                    f"expert tensor {qualified!r} (either may be its input); add it to skip or use another M"
                )


def _jsonable(options: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: (v if isinstance(v, (int, float, str, bool, type(None))) else list(v) if isinstance(v, (list, tuple)) else str(v))
        for k, v in options.items()
    }


@dataclass
class _Resume:
    """Where a checkpointed run stands: its checkpoint, identity, blocks already pruned and their results."""

    checkpoint: BlockCheckpoint
    identity: dict[str, Any]
    done: int
    achieved: dict[str, float]


def _prune_blocks(
    model: nn.Module,
    stack: DecoderStack,
    handler: LLMMethod,
    statistics: str,
    options: Mapping[str, Any],
    tokens: torch.Tensor | None,
    batch_size: int | None,
    targets: Mapping[str, float],
    pattern: tuple[int, int] | None,
    comparison: str | None,
    device: torch.device | None,
    progress: bool,
    name: str,
    unreached: list[str],
    resume: _Resume | None = None,
    plan: ExpertPlan | None = None,
) -> tuple[dict[str, float], dict[str, str]]:
    """Prune block by block; return each projection's achieved sparsity and the comparison group used in this run.

    A projection the calibration data never reached (its statistics are missing) is pruned by
    magnitude in the method's comparison group and its name appended to ``unreached``."""
    achieved: dict[str, float] = dict(resume.achieved) if resume else {}
    chosen: dict[str, str] = {}
    replay = block_replay(model, stack, tokens, batch_size, device)
    with block_progress(len(stack.blocks), name, progress) as advance:
        for index, block in enumerate(stack.blocks):
            if resume is not None and index < resume.done:  # pruned before the kill: replay it for the next block's inputs
                if replay:
                    fused = fused_candidates(block, owned_weights(stack, index)) if plan is not None else {}
                    uses = ExpertUses(fused, "none") if fused else None
                    with on_device(block, device):
                        run_block(block, index, replay, None, None, replace=True, uses=uses)
                    if uses is not None and plan is not None:  # what it pruned per expert, for the report
                        note_restored_experts(stack.block_name(index), fused, uses, plan, achieved)
                advance(f"{stack.block_name(index)} (restored)")
                continue
            modules = {n: m for n, m in block_projections(stack, index).items() if n in targets}
            with on_device(block, device):
                stats: dict[str, InputStatistics] = {}
                fused = fused_candidates(block, owned_weights(stack, index)) if plan is not None and replay else {}
                uses = ExpertUses(fused, statistics) if fused else None
                if (statistics != "none" and modules) or uses is not None:
                    # the forward stops after the last projection call, but not where fused experts are watched (their
                    # uses after that call would be missed)
                    collector = (
                        StatsCollector(modules, hessian=statistics == "hessian", stop_early=uses is None)
                        if statistics != "none"
                        else None
                    )
                    try:
                        run_block(block, index, replay, None, collector, replace=False, uses=uses)
                    finally:
                        if collector is not None:
                            collector.close()
                    stats = collector.stats if collector is not None else {}
                users = Counter(id(stats[n]) for n in modules if n in stats)
                for n, module in modules.items():
                    if not (targets[n] == 0.0 and pattern is None):
                        # the last projection reading its statistics may consume them ("auto" reads them twice)
                        last = n in stats and users[id(stats[n])] == 1 and comparison != "auto"
                        recollect = functools.partial(_collect_one, block, index, replay, n, module) if last else None
                        use, group = handler, comparison
                        if statistics != "none" and n not in stats:
                            unreached.append(n)
                            use, group = unreached_method(handler), None if comparison == "auto" else comparison
                        chosen[n] = _prune_projection(
                            use, options, n, module, stats.get(n), targets[n], pattern, group, recollect
                        )
                    achieved[n] = zero_share(weight_matrix(module))
                    if n in stats:  # free a statistic (a Hessian: up to d x d floats) once its last projection is done
                        users[id(stats[n])] -= 1
                        if not users[id(stats[n])]:
                            stats[n].release()
                if uses is not None and plan is not None:
                    expert_run = ExpertRun(handler, options, statistics, pattern, comparison, achieved, chosen, unreached)
                    prune_experts(expert_run, stack.block_name(index), index, fused, uses, plan)
                if replay and index + 1 < len(stack.blocks):
                    run_block(block, index, replay, None, None, replace=True)
            if resume is not None:
                targets_now = {**targets, **(plan.targets if plan is not None else {})}
                resume.checkpoint.save(index + 1, len(stack.blocks), list(stack.blocks), resume.identity, targets_now, achieved)
            advance(f"{stack.block_name(index)}")
    return achieved, chosen


def _prune_projection(
    handler: LLMMethod,
    options: Mapping[str, Any],
    name: str,
    module: nn.Module,
    stats: InputStatistics | None,
    sparsity: float,
    pattern: tuple[int, int] | None,
    comparison: str | None,
    recollect: Callable[[], InputStatistics] | None,
) -> str:
    """Prune one projection in place and return the comparison group used (a function of its own: the
    working copies die before the next one starts)."""
    weight = weight_matrix(module).detach().float()
    task = LayerTask(name, weight, stats, sparsity, pattern, comparison, recollect)
    pruned, group = handler.prune_with_group(task, **options)
    set_weight_matrix(module, pruned)
    return group


def _collect_one(block: nn.Module, index: int, replay: BlockReplay, name: str, module: nn.Module) -> InputStatistics:
    """One projection's Hessian statistics collected again over the calibration batches (the block as it is now)."""
    collector = StatsCollector({name: module}, hessian=True)
    try:
        run_block(block, index, replay, None, collector, replace=False)
    finally:
        collector.close()
    return collector.stats[name]
