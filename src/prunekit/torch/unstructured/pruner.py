"""Unstructured, N:M and block pruning for PyTorch, with the masks held by the pruner, not the model.

The model keeps its class, its ``state_dict`` keys and no hooks, so ``deepcopy``, ``pickle``,
``torch.save``, ``torch.compile`` and DDP work at every step. Masks are applied to the weights
after every optimizer step and to the gradients before it (when an optimizer is attached), and
optimizer state (momentum, Adam moments) is zeroed where a weight is pruned, so nothing can
revive a pruned weight.
"""

from __future__ import annotations

import math
import numbers
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import torch
from torch import nn

from prunekit import masks as mask_selection
from prunekit.core.deprecation import renamed_globs
from prunekit.errors import ConfigError, StateMismatchError
from prunekit.schedules import ConstantSparsity, PruningSchedule, warn_if_short
from prunekit.torch._sharded import check_not_fsdp1, count_zeros, full, is_dtensor, layout, shard_like
from prunekit.torch.unstructured.selection import Targets, resolve_overrides, select_parameters

STATE_FORMAT = "prunekit.torch.Pruner"
STATE_VERSION = 1
SCOPES = ("layer", "global")
BUILTIN_IMPORTANCES = ("magnitude", "taylor", "random")

ImportanceFn = Callable[[str, nn.Parameter], Union[torch.Tensor, np.ndarray]]


@dataclass(frozen=True)
class NM:
    """N:M sparsity: keep ``n`` of every ``m`` consecutive weights along the input dimension (dim 1)."""

    n: int = 2
    m: int = 4

    def __post_init__(self) -> None:
        if not (isinstance(self.n, int) and isinstance(self.m, int) and 0 < self.n < self.m):
            raise ConfigError(f"NM needs integers 0 < n < m, got n={self.n!r}, m={self.m!r}")


@dataclass(frozen=True)
class Blocks:
    """Block sparsity: prune whole ``shape`` blocks of the weight's 2-D view ``(out, -1)``."""

    shape: tuple[int, int] = (1, 4)
    norm: str = "l1"

    def __post_init__(self) -> None:
        mask_selection.block_scores(np.zeros(self.shape), self.shape, self.norm)  # validates


Pattern = Union[str, NM, Blocks]


class _ScaledSchedule(PruningSchedule):
    """A per-layer float override: the main schedule's timing, scaled to end at ``final``."""

    def __init__(self, base: PruningSchedule, final: float):
        self.base = base
        self._final = ConstantSparsity(final).target_sparsity  # validates [0, 1)

    def should_prune(self, step: int) -> bool:
        return self.base.should_prune(step)

    def sparsity_at(self, step: int) -> float:
        if self.base.final_sparsity == 0:
            return self._final
        return self.base.sparsity_at(step) * self._final / self.base.final_sparsity

    @property
    def final_sparsity(self) -> float:
        return self._final

    def get_config(self) -> dict[str, Any]:
        return {"class_name": "ScaledSchedule", "config": {"base": self.base.get_config(), "final": self._final}}


def _as_schedule(value: Any, what: str) -> PruningSchedule:
    if isinstance(value, PruningSchedule):
        return value
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return ConstantSparsity(float(value), begin_step=0, end_step=0, frequency=1)
    raise ConfigError(f"{what} should be a sparsity in [0, 1) or a PruningSchedule, got {value!r}")


class Pruner:
    """Prunes a model's weights by magnitude (or any importance) on a schedule, outside the model.

    Args:
        model: the model to prune, modified in place (its weights get exact zeros).
        schedule: a :class:`~prunekit.PruningSchedule`, or a float for one-shot pruning at step 0.
        scope: ``"layer"`` (each tensor reaches the sparsity) or ``"global"`` (one threshold
            across all tensors without an override).
        pattern: ``"unstructured"``, :class:`NM` (e.g. ``NM(2, 4)``) or :class:`Blocks`.
        importance: ``"magnitude"`` (|w|), ``"taylor"`` (|w * grad|), ``"random"``, or a callable
            ``(name, param) -> scores`` of the parameter's shape.
        targets: what to prune: ``None`` (Linear, Conv*, ConvTranspose*, Embedding weights),
            module types and/or name globs, or a predicate ``(name, param) -> bool``.
        exclude: globs of parameter or module names never pruned (``ignore``: its deprecated old name).
        overrides: ``{glob: sparsity or schedule}`` per layer; a float follows the main
            schedule's timing, scaled to end at that sparsity.
        normalize: for ``scope="global"``, divide each tensor's scores by its ``"mean"``,
            ``"max"`` or ``"l2"`` first (``None`` compares raw scores).
        optimizer: attach now (see :meth:`attach`).
        regrow: recompute masks from scratch at each pruning step instead of keeping pruned
            weights pruned; ``"set"`` or ``"rigl"`` builds a
            :class:`~prunekit.torch.unstructured.dynamic.DynamicPruner` (dynamic sparse training).
        seed: seed of the ``"random"`` importance.

    Example::

        pruner = Pruner(model, PolynomialDecay(0.0, 0.9, begin_step=0, end_step=1000), optimizer=opt)
        for x, y in loader:
            opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()
            pruner.step()
        model = pruner.strip()
    """

    regrow_methods: tuple[str, ...] = ()  # a subclass naming regrowth methods is built for ``regrow=<one of them>``

    def __new__(cls, *args: Any, regrow: bool | str = False, **kwargs: Any) -> Pruner:
        if isinstance(regrow, str) and cls is Pruner:  # e.g. regrow="rigl": prunekit.torch.unstructured.dynamic.DynamicPruner
            subclass = next((c for c in _subclasses(Pruner) if regrow in c.regrow_methods), None)
            if subclass is None:
                raise ConfigError(
                    f"regrow should be True/False or a regrowth method of prunekit.torch.unstructured.dynamic, got {regrow!r}"
                )
            return super().__new__(subclass)
        return super().__new__(cls)

    @classmethod
    def from_zeros(
        cls, model: nn.Module, *, targets: Targets = None, optimizer: torch.optim.Optimizer | None = None
    ) -> Pruner | None:
        """A pruner whose masks are the exact zeros already in ``model``'s prunable weights (a stripped pruned
        model), so more training (fine-tuning, distillation) keeps them; None when there are no zeros.

        Example::

            pruner = Pruner.from_zeros(pruned, optimizer=optimizer)   # the 80% zeros stay zero
        """
        params = select_parameters(model, targets)
        fractions = {name: int((p == 0).sum()) / p.numel() for name, p in params.items()}
        held = {name: f for name, f in fractions.items() if 0 < f < 1}
        if not held:
            return None
        pruner = cls(model, 0.0, targets=list(held), overrides=held, optimizer=optimizer)
        pruner.prune()
        return pruner

    def __init__(
        self,
        model: nn.Module,
        schedule: PruningSchedule | float,
        *,
        scope: str = "layer",
        pattern: Pattern = "unstructured",
        importance: str | ImportanceFn = "magnitude",
        targets: Targets = None,
        exclude: Sequence[str] = (),
        overrides: Mapping[str, PruningSchedule | float] | None = None,
        normalize: str | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        regrow: bool = False,
        seed: int = 0,
        ignore: Sequence[str] | None = None,
    ):
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model should be a torch.nn.Module, got {type(model).__name__}")
        check_not_fsdp1(model)
        if scope not in SCOPES:
            raise ConfigError(f"scope should be one of {SCOPES}, got {scope!r}")
        if not (pattern == "unstructured" or isinstance(pattern, (NM, Blocks))):
            raise ConfigError(f"pattern should be 'unstructured', NM(n, m) or Blocks(shape), got {pattern!r}")
        if isinstance(pattern, NM) and scope == "global":
            raise ConfigError("N:M sparsity is fixed per group of m weights; use scope='layer' with NM")
        if not callable(importance) and importance not in BUILTIN_IMPORTANCES:
            raise ConfigError(f"importance should be one of {BUILTIN_IMPORTANCES} or a callable, got {importance!r}")
        if normalize not in mask_selection.NORMALIZATIONS:
            raise ConfigError(f"normalize should be one of {mask_selection.NORMALIZATIONS}, got {normalize!r}")
        self.model = model
        self.schedule = _as_schedule(schedule, "schedule")
        self.scope = scope
        self.pattern = pattern
        self.importance = importance
        self.normalize = normalize
        self.regrow = regrow
        self.seed = seed
        self.params = select_parameters(model, targets, renamed_globs(exclude, ignore, "ignore", "exclude", "Pruner"))
        self._check_pattern_fits()
        overridden = resolve_overrides(list(self.params), overrides)
        self._schedules = {
            name: _ScaledSchedule(self.schedule, value) if _is_number(value) else _as_schedule(value, f"override {name!r}")
            for name, value in overridden.items()
        }
        self._masks: dict[str, torch.Tensor] = {}
        self._groups: list[tuple[list[nn.Parameter], list[torch.Tensor]]] = []
        self._step = 0
        self._optimizers: list[torch.optim.Optimizer] = []
        self._hook_handles: list[Any] = []
        self._stripped = False
        self._warned = False
        if optimizer is not None:
            self.attach(optimizer)

    # ----------------------------------------------------------------- public API
    @property
    def step_count(self) -> int:
        """Number of :meth:`step` calls so far (the schedule's current step)."""
        return self._step

    @property
    def stripped(self) -> bool:
        """Whether :meth:`strip` was called (the pruner can no longer be used)."""
        return self._stripped

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """Current boolean masks (``True`` = kept) of the parameters pruned so far, on CPU.

        The mask of a parameter sharded by FSDP2 is a DTensor sharded like it (this rank's part);
        ``mask.full_tensor()``, called on every rank, gathers it.
        """
        return {name: mask.bool() if is_dtensor(mask) else mask.bool().cpu() for name, mask in self._masks.items()}

    def attach(self, optimizer: torch.optim.Optimizer) -> Pruner:
        """Mask gradients before and weights after every ``optimizer.step()``."""
        self._check_live()
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigError(f"optimizer should be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
        missing = [name for name, p in self.params.items() if id(p) not in owned]
        if missing:
            raise ConfigError(f"the optimizer does not update pruned parameter(s) {missing[:5]}; pass it model.parameters()")
        self._optimizers.append(optimizer)
        self._hook_handles.append(optimizer.register_step_pre_hook(lambda *_: self._mask_grads()))
        self._hook_handles.append(optimizer.register_step_post_hook(lambda *_: self.apply_masks()))
        self._zero_optimizer_state()
        return self

    def detach(self) -> None:
        """Remove the optimizer hooks (masks stay with the pruner)."""
        for handle in self._hook_handles:
            handle.remove()
        self._hook_handles.clear()
        self._optimizers.clear()

    def step(self) -> bool:
        """Advance the schedule by one step, call once per optimizer step; returns whether it pruned."""
        self._check_live()
        pruned = self._prune_due(self._step)
        if not pruned and not self._optimizers:
            self.apply_masks()
        self._step += 1
        return pruned

    def prune(self, sparsity: float | None = None) -> None:
        """Prune now, without advancing the schedule: to ``sparsity``, or to each schedule's final sparsity."""
        self._check_live()
        if sparsity is None:
            targets = {name: self._schedule_of(name).final_sparsity for name in self.params}
        else:
            ConstantSparsity(sparsity)  # validates
            targets = dict.fromkeys(self.params, float(sparsity))
        self._update_masks(targets)

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Multiply every pruned weight by its mask (idempotent)."""
        for params, masks in self._groups:
            torch._foreach_mul_(params, masks)

    def sparsity(self) -> dict[str, float]:
        """Fraction of exact zeros in each targeted parameter (under FSDP2, call it on every rank)."""
        return {name: count_zeros(p) / p.numel() for name, p in self.params.items()}

    def check_target(self, where: str = "Pruner") -> bool:
        """Warn (:class:`~prunekit.errors.SparsityWarning`) if the model is far below the schedule's final sparsity.

        :func:`~prunekit.torch.fit` calls it at the end of training and :meth:`strip` calls it too
        (once per pruner). Returns whether it warned.
        """
        if self._warned or not self.params:
            return False
        zeros = sum(count_zeros(p) for p in self.params.values())
        sizes = {name: p.numel() for name, p in self.params.items()}
        total = sum(sizes.values())
        target = sum(self._schedule_of(name).final_sparsity * size for name, size in sizes.items()) / total
        # whole weights: a 6-weight layer at 90 % holds at most 5 zeros (83 %), which is no shortfall
        reachable = sum(math.floor(self._schedule_of(name).final_sparsity * size) for name, size in sizes.items()) / total
        self._warned = warn_if_short(self.schedule, self._step, zeros / total, target, where, reachable=reachable)
        return self._warned

    def strip(self) -> nn.Module:
        """Finalise: apply the masks, drop the hooks and masks, and return the plain model."""
        self._check_live()
        self.apply_masks()
        self.check_target("strip")
        self.detach()
        self._masks.clear()
        self._groups.clear()
        self._stripped = True
        return self.model

    finalize = strip

    def state_dict(self) -> dict[str, Any]:
        """Step and whole masks, to save beside the model and optimizer checkpoints (``torch.save``-able).

        Masks of parameters sharded by FSDP2 are gathered (call it on every rank), so the state
        loads on any number of ranks, or into a Pruner of the unsharded model.
        """
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "step": self._step,
            "shapes": {name: list(p.shape) for name, p in self.params.items()},
            "masks": {name: full(mask.bool()).cpu() for name, mask in self._masks.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict`; raises :class:`StateMismatchError` naming the first mismatch.

        Under FSDP2, pass the same state on every rank: each keeps the shards of its parameters.
        """
        self._check_live()
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            raise StateMismatchError("not a prunekit Pruner state (expected the dict from Pruner.state_dict())")
        if state.get("version", 0) > STATE_VERSION:
            raise StateMismatchError(
                f"pruner state version {state['version']} is newer than this prunekit's {STATE_VERSION}; upgrade prunekit"
            )
        saved = state["shapes"]
        for name, param in self.params.items():
            if name not in saved:
                raise StateMismatchError(f"pruner state has no entry for parameter {name!r}: it was saved for another model")
            if list(param.shape) != list(saved[name]):
                raise StateMismatchError(
                    f"parameter {name!r} has shape {list(param.shape)} but the pruner state holds {saved[name]}"
                )
        extra = sorted(set(saved) - set(self.params))
        if extra:
            raise StateMismatchError(f"pruner state holds parameter {extra[0]!r}, which this pruner does not prune")
        self._masks = {name: self._mask_like(mask, self.params[name]) for name, mask in state["masks"].items()}
        self._group_masks()
        self._step = int(state["step"])
        self.apply_masks()
        self._zero_optimizer_state()

    # ----------------------------------------------------------------- internals
    def _check_live(self) -> None:
        if self._stripped:
            raise ConfigError("this pruner was stripped; create a new Pruner to prune the model again")

    def _check_pattern_fits(self) -> None:
        for name, param in self.params.items():
            if isinstance(self.pattern, NM):
                if param.dim() < 2 or param.shape[1] % self.pattern.m:
                    raise ConfigError(
                        f"N:M {self.pattern.n}:{self.pattern.m} groups weights along dim 1, but {name!r} has shape "
                        f"{tuple(param.shape)}; exclude it with exclude=[{name!r}]"
                    )
            elif isinstance(self.pattern, Blocks):
                rows, cols = self.pattern.shape
                view = (param.shape[0], param.numel() // max(param.shape[0], 1)) if param.dim() else (1, 1)
                if param.dim() == 0 or view[0] % rows or view[1] % cols:
                    raise ConfigError(
                        f"block {self.pattern.shape} does not tile {name!r} (2-D view {view}); "
                        f"choose another block or exclude=[{name!r}]"
                    )

    def _schedule_of(self, name: str) -> PruningSchedule:
        return self._schedules.get(name, self.schedule)

    def _prune_due(self, step: int) -> bool:
        due = {
            name: self._schedule_of(name).sparsity_at(step) for name in self.params if self._schedule_of(name).should_prune(step)
        }
        if due:
            self._update_masks(due)
        return bool(due)

    def _scores(self, name: str, param: nn.Parameter) -> np.ndarray:
        if callable(self.importance):
            scores = self.importance(name, param)
            if isinstance(scores, torch.Tensor):
                scores = full(scores.detach()).float().cpu().numpy()
            scores = np.asarray(scores, dtype=np.float64)
            if scores.shape != tuple(param.shape):
                raise ConfigError(
                    f"importance callable returned scores of shape {scores.shape} for {name!r}, "
                    f"expected the parameter's shape {tuple(param.shape)}"
                )
            if not np.isfinite(scores).all():
                raise ConfigError(f"importance callable returned non-finite scores for {name!r}")
            return scores
        weight = param.detach()
        if self.importance == "magnitude":
            scores = weight.abs()
        elif self.importance == "taylor":
            if param.grad is None:
                raise ConfigError(f"importance='taylor' needs gradients, but {name!r} has none: prune after loss.backward()")
            scores = (weight * param.grad.detach()).abs()
        else:  # random: reproducible per (seed, step, parameter)
            # torch's CPU generator keeps only 32 bits of a seed: fold everything into them
            key = zlib.crc32(f"{self.seed}:{self._step}:{name}".encode())
            generator = torch.Generator().manual_seed(key)
            scores = torch.rand(param.shape, generator=generator)
        return full(scores).float().cpu().numpy()

    def _previous(self, name: str) -> np.ndarray | None:
        if self.regrow or name not in self._masks:
            return None
        return full(self._masks[name].bool()).cpu().numpy()

    def _select(self, targets: Mapping[str, float]) -> dict[str, np.ndarray]:
        scores = {name: self._scores(name, self.params[name]) for name in targets}
        pooled = [n for n in targets if self.scope == "global" and n not in self._schedules]
        chosen: dict[str, np.ndarray] = {}
        if pooled:
            chosen.update(self._select_global(pooled, scores, targets[pooled[0]]))
        for name in targets:
            if name not in chosen:
                chosen[name] = self._select_layer(name, scores[name], targets[name])
        return chosen

    def _select_layer(self, name: str, scores: np.ndarray, sparsity: float) -> np.ndarray:
        previous = self._previous(name)
        if isinstance(self.pattern, NM):
            if sparsity == 0 and previous is None:
                return np.ones(scores.shape, dtype=bool)
            return mask_selection.nm_mask(scores, self.pattern.n, self.pattern.m, axis=1, previous=previous)
        if isinstance(self.pattern, Blocks):
            return mask_selection.block_mask(scores, self.pattern.shape, sparsity, previous, self.pattern.norm)
        return mask_selection.topk_mask(scores, sparsity, previous, regrow=self.regrow)

    def _select_global(self, names: list[str], scores: dict[str, np.ndarray], sparsity: float) -> dict[str, np.ndarray]:
        previous = {n: p for n in names if (p := self._previous(n)) is not None}
        if not isinstance(self.pattern, Blocks):
            pooled = {n: scores[n] for n in names}
            return mask_selection.global_masks(pooled, sparsity, previous, self.normalize, self.regrow)
        shape, norm = self.pattern.shape, self.pattern.norm
        block_scores = {n: mask_selection.block_scores(scores[n], shape, norm, n) for n in names}
        block_previous = {n: mask_selection.block_keep_of(p, shape) for n, p in previous.items()}
        keep = mask_selection.global_masks(block_scores, sparsity, block_previous, self.normalize, self.regrow)
        return {n: mask_selection.expand_blocks(keep[n], shape, tuple(scores[n].shape)) for n in names}

    def _update_masks(self, targets: Mapping[str, float]) -> None:
        for name, keep in self._select(targets).items():
            self._masks[name] = self._mask_like(torch.from_numpy(keep), self.params[name])
        self._group_masks()
        self.apply_masks()
        self._zero_optimizer_state()

    @staticmethod
    def _mask_like(whole: torch.Tensor, param: nn.Parameter) -> torch.Tensor:
        """A whole boolean mask as a multiplier of ``param``: its dtype and device, and its shard under FSDP2."""
        return shard_like(whole.to(device=param.device, dtype=param.dtype), param)

    def _group_masks(self) -> None:
        """Pair parameters with masks, grouped so each ``_foreach_mul_`` sees one layout (plain or one DTensor mesh)."""
        groups: dict[Any, tuple[list[nn.Parameter], list[torch.Tensor]]] = {}
        for name, mask in self._masks.items():
            params, masks = groups.setdefault(layout(self.params[name]), ([], []))
            params.append(self.params[name])
            masks.append(mask)
        self._groups = list(groups.values())

    @torch.no_grad()
    def _mask_grads(self) -> None:
        for params, masks in self._groups:
            pairs = [(p.grad, m) for p, m in zip(params, masks) if p.grad is not None]
            if pairs:
                grads, kept = zip(*pairs)
                torch._foreach_mul_(list(grads), list(kept))

    @torch.no_grad()
    def _zero_optimizer_state(self) -> None:
        for optimizer in self._optimizers:
            for name, mask in self._masks.items():
                for value in optimizer.state.get(self.params[name], {}).values():
                    if isinstance(value, torch.Tensor) and value.shape == mask.shape:
                        value.mul_(mask)


def _subclasses(cls: type) -> list[type]:
    return [c for sub in cls.__subclasses__() for c in (sub, *_subclasses(sub))]


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def prune_unstructured(
    model: nn.Module,
    sparsity: float,
    *,
    scope: str = "layer",
    pattern: Pattern = "unstructured",
    importance: str | ImportanceFn = "magnitude",
    targets: Targets = None,
    exclude: Sequence[str] = (),
    overrides: Mapping[str, float] | None = None,
    normalize: str | None = None,
    ignore: Sequence[str] | None = None,
) -> nn.Module:
    """One call, one-shot: prune ``model`` in place to ``sparsity`` and return it (no pruner left).

    Example::

        prune_unstructured(model, 0.9, scope="global")
    """
    pruner = Pruner(
        model,
        sparsity,
        scope=scope,
        pattern=pattern,
        importance=importance,
        targets=targets,
        exclude=renamed_globs(exclude, ignore, "ignore", "exclude", "prune_unstructured"),
        overrides=overrides,
        normalize=normalize,
    )
    pruner.prune()
    return pruner.strip()
