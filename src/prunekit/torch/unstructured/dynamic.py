"""Dynamic sparse training for PyTorch: a :class:`Pruner` whose masks move (SET, RigL) at fixed sparsity.

:class:`DynamicPruner` reaches its sparsity like a :class:`Pruner` (one-shot at step 0 for
training sparse from scratch, or gradually from a dense model), then every ``update_interval``
steps until ``end_step`` drops the smallest-magnitude active weights of each layer and regrows
as many: at random (``regrow="set"``) or where the gradient is largest (``regrow="rigl"``).
``Pruner(model, ..., regrow="rigl", end_step=...)`` builds one too.

RigL needs the dense gradient only on update steps, and in PyTorch it is free: ``backward()``
computes the gradient of every entry of a weight tensor, pruned or not. The pruner reads
``|grad|`` in the optimizer's pre-step hook of an update step, before it masks the gradient, and
keeps nothing between updates. Regrown weights start at exactly 0 and their optimizer state
(momentum, Adam moments) is zeroed. Under DDP the gradients are already all-reduced and the
weights equal, and under FSDP2 both are gathered, so every rank chooses the same masks; SET's
random scores are seeded by ``(seed, step, parameter)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit import dynamic
from prunekit.errors import ConfigError
from prunekit.schedules import PruningSchedule
from prunekit.torch._sharded import full
from prunekit.torch.unstructured.pruner import NM, Blocks, Pruner, _ScaledSchedule


class DynamicPruner(Pruner):
    """A :class:`Pruner` that drops and regrows weights during training (SET or RigL).

    Args:
        model, schedule: as for :class:`Pruner`; a float trains sparse from the first step.
        regrow: ``"set"`` (random regrowth) or ``"rigl"`` (regrow the largest ``|grad|``).
        end_step: no update at or after this step; the drop fraction decays to 0 there
            (RigL uses 75 % of the training steps).
        update_interval: steps between updates (>= 1).
        drop_fraction: fraction of each layer's active weights moved at the first update, in (0, 1).
        begin_step: first update; default: one ``update_interval`` after the step the schedule
            reaches its final sparsity.
        distribution: per-layer sparsity, ``"uniform"``, ``"erdos_renyi"`` or
            ``"erdos_renyi_kernel"`` (layer scope only; the schedule's final sparsity overall).
        **options: the other :class:`Pruner` arguments (scope, pattern, targets, ignore,
            overrides, normalize, optimizer, seed). ``scope="global"`` drops and regrows across
            layers at once (the total is fixed, layers trade weights); ``"layer"`` keeps every
            layer's count fixed.

    After each update, :attr:`history` gets ``{"step", "drop_fraction", "dropped": {name: n},
    "regrown": {name: n}, "nonzeros": {name: n}, "turnover"}``; turnover is the fraction of the
    connections active at the first update that are inactive now.

    Example::

        pruner = DynamicPruner(model, 0.9, regrow="rigl", end_step=750, update_interval=50, optimizer=opt)
        pruner.prune()  # sparse from the start
        for x, y in loader:
            opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()
            pruner.step()
    """

    regrow_methods = dynamic.REGROW_METHODS

    def __init__(
        self,
        model: nn.Module,
        schedule: PruningSchedule | float,
        *,
        regrow: str = dynamic.RIGL,
        end_step: int | None = None,
        update_interval: int = 100,
        drop_fraction: float = 0.3,
        begin_step: int | None = None,
        distribution: str = "uniform",
        **options: Any,
    ):
        if end_step is None:
            raise ConfigError(
                f"regrow={regrow!r} needs end_step, the step regrowth stops at (RigL: 75 % of the training steps), "
                "e.g. DynamicPruner(model, 0.9, regrow='rigl', end_step=int(0.75 * total_steps))"
            )
        importance = options.get("importance", "magnitude")
        if importance != "magnitude":
            raise ConfigError(f"dynamic sparsity drops by magnitude; importance={importance!r} is not supported with regrow")
        self.regrowth = dynamic.Regrowth(regrow, end_step, update_interval, drop_fraction, begin_step)
        if distribution not in dynamic.DISTRIBUTIONS:
            raise ConfigError(f"distribution should be one of {dynamic.DISTRIBUTIONS}, got {distribution!r}")
        super().__init__(model, schedule, **options)
        self.distribution = distribution
        if distribution != "uniform":
            self._distribute(distribution)
        self._check_shares()
        self._resolve_begin()
        self.history: list[dict[str, Any]] = []
        self._initial: dict[str, np.ndarray] | None = None
        self._grow_scores: dict[str, np.ndarray] = {}
        self._optimizer_steps = 0
        self._steps_at_update = -1

    # ----------------------------------------------------------------- set-up checks
    def _distribute(self, distribution: str) -> None:
        if self.scope == "global":
            raise ConfigError(f"distribution={distribution!r} sets each layer's sparsity; use scope='layer' with it")
        if isinstance(self.pattern, NM):
            raise ConfigError(
                f"N:M fixes each layer's sparsity at (m - n) / m; distribution={distribution!r} needs another pattern"
            )
        if self._schedules:
            raise ConfigError(f"use either overrides or distribution={distribution!r}, not both")
        shapes = {name: tuple(p.shape) for name, p in self.params.items()}
        shares = dynamic.layer_sparsities(shapes, self.schedule.final_sparsity, distribution)
        self._schedules = {name: _ScaledSchedule(self.schedule, share) for name, share in shares.items()}

    def _check_shares(self) -> None:
        for name, param in self.params.items():
            sparsity = self._schedule_of(name).final_sparsity
            if isinstance(self.pattern, Blocks):
                rows, cols = self.pattern.shape
                dynamic.check_layer_share(name, param.numel() // (rows * cols), sparsity, "layer (counted in blocks)")
            elif not isinstance(self.pattern, NM):
                dynamic.check_layer_share(name, param.numel(), sparsity)

    def _resolve_begin(self) -> None:
        """Default ``begin_step``: one interval after every layer's schedule reached its final sparsity."""
        regrowth = self.regrowth
        schedules = {name: self._schedule_of(name) for name in self.params}
        if regrowth.begin_step is None:
            start = max(dynamic.regrowth_start(s.sparsity_at, s.final_sparsity, regrowth.end_step) for s in schedules.values())
            begin = start + regrowth.update_interval
            if begin >= regrowth.end_step:
                raise ConfigError(
                    f"the schedule reaches its final sparsity at step {start}, so the first update (one "
                    f"update_interval later, step {begin}) is not before end_step {regrowth.end_step}; raise end_step"
                )
            self.regrowth = regrowth = dynamic.Regrowth(
                regrowth.method, regrowth.end_step, regrowth.update_interval, regrowth.drop_fraction, begin
            )
        for name, schedule in schedules.items():
            dynamic.check_constant_sparsity(
                schedule.sparsity_at, schedule.final_sparsity, regrowth.first_step, regrowth.end_step, f"the schedule of {name!r}"
            )

    # ----------------------------------------------------------------- training
    def step(self) -> bool:
        """Advance one step: prune on schedule, then drop and regrow on update steps; returns whether masks changed."""
        step = self._step
        changed = super().step()
        if self.regrowth.is_update(step) and self._masks:
            self._update(step)
            changed = True
        return changed

    @torch.no_grad()
    def _mask_grads(self) -> None:
        """The optimizer's pre-step hook: on an update step, read RigL's ``|grad|`` before masking it."""
        self._optimizer_steps += 1
        if self.regrowth.method == dynamic.RIGL and self.regrowth.is_update(self._step):
            self._grow_scores = {name: self._dense_grad(name) for name in self._masks}
        super()._mask_grads()

    def _dense_grad(self, name: str) -> np.ndarray:
        grad = self.params[name].grad
        if grad is None:
            raise ConfigError(
                f"RigL needs the gradient of {name!r} at update step {self._step}, but it has none: "
                "call loss.backward() before optimizer.step() and pruner.step()"
            )
        return full(grad.detach()).abs().float().cpu().numpy()

    def _grow(self, step: int, names: list[str]) -> dict[str, np.ndarray]:
        if self.regrowth.method == dynamic.SET:
            return {n: dynamic.random_scores(self.seed, step, n, tuple(self.params[n].shape)) for n in names}
        if self._optimizers:
            if self._optimizer_steps == self._steps_at_update or not self._grow_scores:
                raise ConfigError(
                    f"RigL update at step {step}: no optimizer step ran since the previous update, so there is no "
                    "fresh gradient; call optimizer.step() before every pruner.step()"
                )
            scores, self._grow_scores = self._grow_scores, {}
            return scores
        return {n: self._dense_grad(n) for n in names}

    @torch.no_grad()
    def _update(self, step: int) -> None:
        names = [n for n in self.params if n in self._masks]
        masks = {n: full(self._masks[n].bool()).cpu().numpy() for n in names}
        if self._initial is None:
            self._initial = {n: m.copy() for n, m in masks.items()}
        weights = {n: full(self.params[n].detach()).float().cpu().numpy() for n in names}
        grow = self._grow(step, names)
        self._steps_at_update = self._optimizer_steps
        fraction = self.regrowth.drop_fraction_at(step)
        constraint = _constraint(self.pattern)
        pooled = [n for n in names if self.scope == "global" and n not in self._schedules]
        updates: dict[str, dynamic.LayerUpdate] = {}
        if pooled:
            subset = {n: masks[n] for n in pooled}
            updates.update(dynamic.regrow(subset, weights, grow, fraction, pooled=True, constraint=constraint))
        rest = {n: masks[n] for n in names if n not in updates}
        if rest:
            updates.update(dynamic.regrow(rest, weights, grow, fraction, constraint=constraint))
        for name in names:
            update, param = updates[name], self.params[name]
            self._masks[name] = self._mask_like(torch.from_numpy(update.mask), param)
            if update.regrown:
                self._restart(name, update.regrown_mask)
        self._group_masks()
        self.apply_masks()
        self._zero_optimizer_state()
        current = {n: updates[n].mask for n in names}
        self.history.append(
            {
                "step": step,
                "drop_fraction": fraction,
                "dropped": {n: updates[n].dropped for n in names},
                "regrown": {n: updates[n].regrown for n in names},
                "nonzeros": {n: updates[n].nonzeros for n in names},
                "turnover": dynamic.turnover(self._initial, current),
            }
        )

    def _restart(self, name: str, grown: np.ndarray) -> None:
        """Regrown weights start at exactly 0, with zero optimizer state (momentum, Adam moments)."""
        param = self.params[name]
        keep = self._mask_like(torch.from_numpy(~grown), param)
        param.mul_(keep)
        for optimizer in self._optimizers:
            for value in optimizer.state.get(param, {}).values():
                if isinstance(value, torch.Tensor) and value.shape == param.shape:
                    value.mul_(keep.to(value.dtype))

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """:meth:`Pruner.state_dict` plus the regrowth settings, the history and the first update's masks."""
        state = super().state_dict()
        state["dynamic"] = {
            "regrowth": self.regrowth.get_config(),
            "history": list(self.history),
            "initial": None if self._initial is None else {n: torch.from_numpy(m.copy()) for n, m in self._initial.items()},
        }
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict` (a plain :class:`Pruner` state resumes with an empty history)."""
        super().load_state_dict(state)
        saved = state.get("dynamic") or {}
        self.history = list(saved.get("history", []))
        initial = saved.get("initial")
        self._initial = None if initial is None else {n: np.asarray(m, dtype=bool) for n, m in initial.items()}


def _constraint(pattern: Any) -> dynamic.Constraint:
    if isinstance(pattern, NM):
        return dynamic.Constraint(nm=(pattern.n, pattern.m, 1))
    if isinstance(pattern, Blocks):
        return dynamic.Constraint(block=(pattern.shape[0], pattern.shape[1]), pooling=pattern.norm)
    return dynamic.UNCONSTRAINED
