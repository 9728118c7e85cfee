"""Sparsity schedules: for a training step, whether to prune now and to which sparsity.

Framework-free and shared by ``prunekit.torch`` and ``prunekit.keras``. The semantics follow
the TensorFlow Model Optimization Toolkit: pruning happens only at
``begin_step + k * frequency`` inside ``[begin_step, end_step]`` (``end_step=-1`` means no end).
"""

from __future__ import annotations

import math
import numbers
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any

import numpy as np

from prunekit.errors import ConfigError


def _check_step(value: Any, name: str, allow_minus_one: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} should be an integer step, got {value!r}")
    value = int(value)
    if value < 0 and not (allow_minus_one and value == -1):
        hint = " (or -1 for no end)" if allow_minus_one else ""
        raise ConfigError(f"{name} should be >= 0{hint}, got {value}")
    return value


def _check_sparsity(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} should be a number in [0, 1), got {value!r}")
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{name} should be in [0, 1), got {value}")
    return value


def _check_frequency(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(f"frequency should be an integer >= 1, got {value!r}")
    return int(value)


def _as_step(value: Any) -> int:
    """A step given as an int, a NumPy scalar or a 0-d tensor (anything ``np.asarray`` reads) as an int."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return _check_step(value, "step")
    try:
        array = np.asarray(value)
    except Exception:  # noqa: BLE001 - any object NumPy cannot read is reported below
        array = None
    if array is None or array.ndim != 0 or not np.issubdtype(array.dtype, np.integer):
        raise ConfigError(f"step should be an integer (or a 0-d integer tensor), got {value!r}")
    return _check_step(int(array), "step")


def schedule_value(schedule: PruningSchedule, step: int) -> tuple[bool, float]:
    """``schedule(step)`` as Python ``(bool, float)``, whatever the schedule returns (bools, NumPy values or
    TensorFlow tensors, as TF MOT-style custom schedules do).

    Example::

        schedule_value(ConstantSparsity(0.5, 0, frequency=10), 20)  # (True, 0.5)
    """
    prune, sparsity = schedule(step)
    return bool(np.asarray(prune)), float(np.asarray(sparsity))


class PruningSchedule(ABC):
    """A schedule answers ``schedule(step) -> (prune_now, sparsity)``.

    Subclasses implement :meth:`get_config` and either :meth:`should_prune` and :meth:`sparsity_at`
    (prunekit's built-ins) or ``__call__`` alone (TF MOT's way; its results may be tensors).

    Example::

        class EveryTenSteps(PruningSchedule):
            def __call__(self, step):
                return step % 10 == 0, 0.5
            def get_config(self):
                return {"class_name": "EveryTenSteps", "config": {}}
    """

    def _overrides_call(self) -> bool:
        return type(self).__call__ is not PruningSchedule.__call__

    def should_prune(self, step: int) -> bool:
        """Whether masks are recomputed at ``step``."""
        if not self._overrides_call():
            raise NotImplementedError(f"{type(self).__name__} should implement __call__ or should_prune and sparsity_at")
        return schedule_value(self, step)[0]

    def sparsity_at(self, step: int) -> float:
        """The target sparsity the schedule asks for at ``step``."""
        if not self._overrides_call():
            raise NotImplementedError(f"{type(self).__name__} should implement __call__ or should_prune and sparsity_at")
        return schedule_value(self, step)[1]

    @property
    def final_sparsity(self) -> float:
        """The sparsity the schedule ends at: a ``final_sparsity`` attribute set by the subclass, else the
        sparsity at its ``end_step``."""
        if "_final_sparsity" in self.__dict__:
            return float(self.__dict__["_final_sparsity"])
        end = getattr(self, "end_step", None)
        if isinstance(end, numbers.Integral) and int(end) >= 0:
            return self.sparsity_at(int(end))
        raise ConfigError(
            f"{type(self).__name__} does not say which sparsity it ends at; set self.final_sparsity in its "
            "__init__ (or give it an end_step >= 0)"
        )

    @final_sparsity.setter
    def final_sparsity(self, value: float) -> None:
        self.__dict__["_final_sparsity"] = value

    @abstractmethod
    def get_config(self) -> dict[str, Any]:
        """``{"class_name": ..., "config": {...}}``, JSON-serialisable."""

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PruningSchedule:
        """Build from the ``"config"`` part of :meth:`get_config` (or the whole dict)."""
        if "class_name" in config:
            return schedule_from_config(config)
        return cls(**config)

    def __call__(self, step: int) -> tuple[bool, float]:
        step = _as_step(step)
        return self.should_prune(step), self.sparsity_at(step)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PruningSchedule) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash(repr(self))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config()["config"].items())
        return f"{type(self).__name__}({args})"


def _in_pruning_turn(step: int, begin_step: int, end_step: int, frequency: int) -> bool:
    in_range = step >= begin_step and (end_step == -1 or step <= end_step)
    return in_range and (step - begin_step) % frequency == 0


class ConstantSparsity(PruningSchedule):
    """Prune to ``target_sparsity`` every ``frequency`` steps from ``begin_step`` to ``end_step``.

    Example::

        ConstantSparsity(0.5, begin_step=0, frequency=100)(200)  # (True, 0.5)
    """

    def __init__(self, target_sparsity: float, begin_step: int = 0, end_step: int = -1, frequency: int = 100):
        self.target_sparsity = _check_sparsity(target_sparsity, "target_sparsity")
        self.begin_step = _check_step(begin_step, "begin_step")
        self.end_step = _check_step(end_step, "end_step", allow_minus_one=True)
        if self.end_step != -1 and self.end_step < self.begin_step:
            raise ConfigError(f"end_step ({end_step}) should be >= begin_step ({begin_step}) or -1")
        self.frequency = _check_frequency(frequency)
        self._final_sparsity = self.target_sparsity

    def should_prune(self, step: int) -> bool:
        return _in_pruning_turn(step, self.begin_step, self.end_step, self.frequency)

    def sparsity_at(self, step: int) -> float:
        return self.target_sparsity

    def get_config(self) -> dict[str, Any]:
        return {
            "class_name": "ConstantSparsity",
            "config": {
                "target_sparsity": self.target_sparsity,
                "begin_step": self.begin_step,
                "end_step": self.end_step,
                "frequency": self.frequency,
            },
        }


class PolynomialDecay(PruningSchedule):
    """Sparsity rising from ``initial_sparsity`` to ``final_sparsity`` as a polynomial of the step.

    ``s(t) = final + (initial - final) * (1 - p) ** power`` with
    ``p = clip((t - begin_step) / (end_step - begin_step), 0, 1)``, so ``s(end_step) == final``
    (``end_step == begin_step`` prunes once, to ``final``, as TF MOT allows).
    ``power=3`` prunes fast early, while the network has redundancy, and slowly near the end
    (Zhu & Gupta, 2017).

    Example::

        PolynomialDecay(0.0, 0.8, begin_step=0, end_step=1000, frequency=100)(1000)  # (True, 0.8)
    """

    def __init__(
        self,
        initial_sparsity: float,
        final_sparsity: float,
        begin_step: int,
        end_step: int,
        power: float = 3,
        frequency: int = 100,
    ):
        self.initial_sparsity = _check_sparsity(initial_sparsity, "initial_sparsity")
        self._final_sparsity = _check_sparsity(final_sparsity, "final_sparsity")
        self.begin_step = _check_step(begin_step, "begin_step")
        self.end_step = _check_step(end_step, "end_step")
        if self.end_step < self.begin_step:
            raise ConfigError(f"end_step ({end_step}) should be >= begin_step ({begin_step})")
        if self._final_sparsity < self.initial_sparsity:
            raise ConfigError(
                f"final_sparsity ({final_sparsity}) should be >= initial_sparsity ({initial_sparsity}): pruning "
                "never revives weights, so the sparsity cannot decrease"
            )
        if isinstance(power, bool) or not isinstance(power, numbers.Real) or power <= 0:
            raise ConfigError(f"power should be a number > 0, got {power!r}")
        self.power: float = power
        self.frequency: int = _check_frequency(frequency)
        if (self.end_step - self.begin_step) % self.frequency:
            last = self.end_step - (self.end_step - self.begin_step) % self.frequency
            warnings.warn(
                f"PolynomialDecay: end_step={end_step} is not begin_step + k * frequency, so the last "
                f"pruning happens at step {last} with sparsity {self.sparsity_at(last):.4f}, not "
                f"{final_sparsity}; choose end_step = begin_step + k * {frequency} to reach it",
                stacklevel=2,
            )

    def should_prune(self, step: int) -> bool:
        return _in_pruning_turn(step, self.begin_step, self.end_step, self.frequency)

    def sparsity_at(self, step: int) -> float:
        if self.end_step == self.begin_step:  # TF MOT allows it: one pruning step, at the final sparsity
            return self._final_sparsity if step >= self.begin_step else self.initial_sparsity
        progress = (step - self.begin_step) / (self.end_step - self.begin_step)
        progress = min(1.0, max(0.0, progress))
        decayed = (self.initial_sparsity - self._final_sparsity) * (1.0 - progress) ** self.power
        return decayed + self._final_sparsity

    def get_config(self) -> dict[str, Any]:
        return {
            "class_name": "PolynomialDecay",
            "config": {
                "initial_sparsity": self.initial_sparsity,
                "final_sparsity": self._final_sparsity,
                "begin_step": self.begin_step,
                "end_step": self.end_step,
                "power": self.power,
                "frequency": self.frequency,
            },
        }


class IterativeSparsity(PruningSchedule):
    """Prune at given steps to given sparsities: the iterative prune/retrain cycle.

    ``milestones`` is a list of ``(step, sparsity)`` with increasing steps and non-decreasing
    sparsities; the sparsity between milestones is the last one reached (0 before the first).

    Example::

        s = IterativeSparsity([(0, 0.5), (300, 0.75), (600, 0.9)])
        s(300)  # (True, 0.75)
        s(301)  # (False, 0.75)
    """

    def __init__(self, milestones: Iterable[tuple[int, float]] | Iterable[list]):
        parsed: list[tuple[int, float]] = []
        for i, item in enumerate(milestones):
            try:
                step, sparsity = item
            except (TypeError, ValueError):
                raise ConfigError(f"milestones[{i}] should be a (step, sparsity) pair, got {item!r}") from None
            parsed.append((_check_step(step, f"milestones[{i}] step"), _check_sparsity(sparsity, f"milestones[{i}] sparsity")))
        if not parsed:
            raise ConfigError("milestones should hold at least one (step, sparsity) pair")
        for i in range(1, len(parsed)):
            if parsed[i][0] <= parsed[i - 1][0]:
                raise ConfigError(f"milestones steps should increase: step {parsed[i][0]} follows {parsed[i - 1][0]}")
            if parsed[i][1] < parsed[i - 1][1]:
                raise ConfigError(
                    f"milestones sparsities should not decrease (pruning is monotone): "
                    f"{parsed[i][1]} at step {parsed[i][0]} follows {parsed[i - 1][1]}"
                )
        self.milestones = parsed
        self._final_sparsity = parsed[-1][1]
        self._steps = {step: sparsity for step, sparsity in parsed}

    def should_prune(self, step: int) -> bool:
        return step in self._steps

    def sparsity_at(self, step: int) -> float:
        reached = [sparsity for milestone, sparsity in self.milestones if milestone <= step]
        return reached[-1] if reached else 0.0

    @property
    def end_step(self) -> int:
        return self.milestones[-1][0]

    def get_config(self) -> dict[str, Any]:
        return {
            "class_name": "IterativeSparsity",
            "config": {"milestones": [[step, sparsity] for step, sparsity in self.milestones]},
        }


def iterative_schedule(sparsity: float, rounds: int, steps_per_round: int) -> IterativeSparsity:
    """Milestones that remove the same fraction of the remaining weights each round.

    Example::

        iterative_schedule(0.875, rounds=3, steps_per_round=100).milestones  # [(0, 0.5), (100, 0.75), (200, 0.875)]
    """
    if not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"rounds should be an integer >= 1, got {rounds!r}")
    ConstantSparsity(sparsity)  # validates
    return IterativeSparsity([(r * steps_per_round, 1.0 - (1.0 - sparsity) ** ((r + 1) / rounds)) for r in range(rounds)])


def gradual_schedule(
    sparsity: float,
    epochs: int,
    steps_per_epoch: int,
    pruning_epochs: int | None = None,
    frequency: int | None = None,
    initial_sparsity: float = 0.0,
    power: float = 3,
) -> PolynomialDecay:
    """A :class:`PolynomialDecay` over ``pruning_epochs`` (two thirds of ``epochs`` by default) that
    reaches ``sparsity`` exactly: its end step is a multiple of ``frequency`` inside the training."""
    if not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs should be an integer >= 1, got {epochs!r}")
    pruning_epochs = max(1, (2 * epochs) // 3) if pruning_epochs is None else pruning_epochs
    if not isinstance(pruning_epochs, int) or not 1 <= pruning_epochs <= epochs:
        raise ConfigError(f"pruning_epochs should be an integer in [1, epochs={epochs}], got {pruning_epochs!r}")
    frequency = frequency or max(1, steps_per_epoch // 10)
    end_step = frequency * math.ceil(pruning_epochs * steps_per_epoch / frequency)
    if end_step >= epochs * steps_per_epoch:
        end_step = frequency * ((epochs * steps_per_epoch - 1) // frequency)
    if end_step <= 0:
        raise ConfigError(
            f"{epochs} epoch(s) of {steps_per_epoch} steps leave no room for gradual pruning every {frequency} "
            "steps; train for more epochs or lower frequency"
        )
    return PolynomialDecay(initial_sparsity, sparsity, 0, end_step, power=power, frequency=frequency)


_SCHEDULES: dict[str, type[PruningSchedule]] = {
    "ConstantSparsity": ConstantSparsity,
    "PolynomialDecay": PolynomialDecay,
    "IterativeSparsity": IterativeSparsity,
}


def schedule_from_config(config: dict[str, Any]) -> PruningSchedule:
    """Rebuild a schedule from ``schedule.get_config()`` (for example after a JSON round-trip).

    Example::

        schedule_from_config(PolynomialDecay(0.0, 0.9, 0, 1000).get_config())
    """
    if not isinstance(config, dict) or "class_name" not in config or "config" not in config:
        raise ConfigError(f"a schedule config should be {{'class_name': ..., 'config': {{...}}}}, got {config!r}")
    name = config["class_name"]
    if name not in _SCHEDULES:
        raise ConfigError(f"unknown schedule class_name {name!r}; expected one of {sorted(_SCHEDULES)}")
    try:
        return _SCHEDULES[name](**config["config"])
    except TypeError as exc:
        raise ConfigError(f"bad fields for schedule {name}: {exc}") from None


def warn_if_short(
    schedule: PruningSchedule,
    steps: int,
    achieved: float,
    target: float,
    where: str,
    tolerance: float = 0.05,
    reachable: float | None = None,
) -> bool:
    """Warn (:class:`~prunekit.errors.SparsityWarning`) when ``achieved`` sparsity is far below ``target``.

    Called at the end of training and on strip: a schedule whose ``begin_step`` is never reached
    ends a run with a dense model, which is easy to miss. The message names the schedule, the
    step count and what to change. ``reachable`` (at most ``target``) is the most the weights can
    reach (whole weights per layer); when given, it is what ``achieved`` is compared with, so a
    tiny layer's rounding is not reported. Returns whether it warned.

    Example::

        warn_if_short(PolynomialDecay(0, 0.8, 500, 900), steps=100, achieved=0.0, target=0.8, where="strip")
    """
    if achieved >= (target if reachable is None else min(reachable, target)) - tolerance:
        return False
    from prunekit.errors import SparsityWarning

    config = schedule.get_config()["config"]
    begin, end = config.get("begin_step"), config.get("end_step", -1)
    if isinstance(begin, int) and steps <= begin:
        hint = f"its begin_step={begin} was never reached; lower begin_step or train longer"
    elif isinstance(end, int) and end > 0 and steps <= end:
        hint = (
            f"it reaches its target at end_step={end} but training stopped at step {steps}; train longer, "
            "or set end_step from the run's length (at most steps_per_epoch * epochs)"
        )
    else:
        hint = "check its frequency and end_step against the number of training steps"
    warnings.warn(
        f"{where}: sparsity is {achieved:.1%} after {steps} pruner step(s), but the schedule {schedule!r} "
        f"targets {target:.1%}: {hint}",
        SparsityWarning,
        stacklevel=3,
    )
    return True
