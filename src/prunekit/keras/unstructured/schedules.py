"""TF MOT's pruning schedules as ``prunekit.keras`` exports them: tensor steps and tfmot-style subclasses.

The classes are :mod:`prunekit.schedules`' (same validation, configs and Python results for
integer steps) with TF MOT's tensor face added:

* called with a ``tf.Tensor`` or ``tf.Variable`` step (eagerly or inside a ``tf.function``), a
  schedule returns ``(bool tensor, float32 tensor)``, as TF MOT's do;
* :class:`PruningSchedule` is the base for custom schedules written TF MOT's way: override
  ``__call__(step)`` and ``get_config()``, and use ``self._should_prune_in_step``,
  ``self._validate_step`` and ``self._validate_sparsity`` like TF MOT's built-ins. The pruning
  state calls a schedule with the integer step and reads its results with ``np.asarray``, so a
  ``__call__`` may return Python values or tensors.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from prunekit import schedules
from prunekit.errors import ConfigError


def _is_tensor(value: Any) -> bool:
    return isinstance(value, (tf.Tensor, tf.Variable, keras.Variable)) or tf.is_tensor(value)


class PruningSchedule(schedules.PruningSchedule):
    """Base of TF MOT-style custom schedules: override ``__call__(step)`` and ``get_config()``.

    Example::

        class EveryOtherStep(PruningSchedule):
            def __init__(self, sparsity):
                self._validate_sparsity(sparsity, "sparsity")
                self.sparsity = sparsity
            def __call__(self, step):
                return self._should_prune_in_step(step, 0, -1, 2), tf.constant(self.sparsity, tf.float32)
            def get_config(self):
                return {"class_name": "EveryOtherStep", "config": {"sparsity": self.sparsity}}
    """

    def _overrides_call(self) -> bool:
        return type(self).__call__ is not PruningSchedule.__call__

    def __call__(self, step: Any) -> tuple[Any, Any]:
        if _is_tensor(step):
            return self._tensor_call(tf.cast(tf.convert_to_tensor(step), tf.int64))
        return super().__call__(step)

    def _tensor_call(self, step: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """``(should_prune, sparsity)`` as tensors for a tensor step; built-ins compute it with TF ops."""
        raise NotImplementedError(f"{type(self).__name__} should implement __call__")

    def _should_prune_in_step(self, step: Any, begin_step: Any, end_step: Any, frequency: Any) -> tf.Tensor:
        """TF MOT's test: ``step`` in ``[begin_step, end_step]`` (``end_step < 0``: no end) and on a
        ``frequency`` boundary from ``begin_step``; a bool tensor."""
        step = tf.cast(step, tf.int64)
        begin, end, every = (tf.cast(v, tf.int64) for v in (begin_step, end_step, frequency))
        in_range = tf.logical_and(tf.greater_equal(step, begin), tf.logical_or(tf.less_equal(step, end), tf.less(end, 0)))
        return tf.logical_and(in_range, tf.equal(tf.math.floormod(step - begin, every), 0))

    def _validate_step(self, begin_step: int, end_step: int, frequency: int, allow_negative_1: bool) -> None:
        """TF MOT's argument checks, raising :class:`~prunekit.errors.ConfigError` (a ``ValueError``)."""
        if begin_step < 0:
            raise ConfigError("begin_step should be >= 0")
        if not allow_negative_1 and end_step == -1:
            raise ConfigError("end_step cannot be -1.")
        if end_step != -1:
            if end_step < 0:
                raise ConfigError("end_step can be -1 or >= 0")
            if end_step < begin_step:
                raise ConfigError("begin_step should be <= end_step if end_step != -1")
        if frequency <= 0:
            raise ConfigError("frequency should be > 0")

    def _validate_sparsity(self, sparsity: float, variable_name: str) -> None:
        """TF MOT's check: ``sparsity`` in ``[0, 1)``."""
        if not 0.0 <= sparsity < 1.0:
            raise ConfigError(f"{variable_name} must be in range [0,1)")

    def get_config(self) -> dict[str, Any]:
        """``{"class_name": ..., "config": {...}}``; custom schedules must override it (as in TF MOT)."""
        raise NotImplementedError(f"{type(self).__name__} should implement get_config")


class ConstantSparsity(schedules.ConstantSparsity, PruningSchedule):
    """:class:`prunekit.schedules.ConstantSparsity` that also takes tensor steps (TF MOT's results).

    Example::

        ConstantSparsity(0.5, begin_step=0, frequency=10)(tf.Variable(20))  # (<tf.Tensor True>, <tf.Tensor 0.5>)
    """

    def _tensor_call(self, step: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        prune = self._should_prune_in_step(step, self.begin_step, self.end_step, self.frequency)
        return prune, tf.constant(self.target_sparsity, tf.float32)


class PolynomialDecay(schedules.PolynomialDecay, PruningSchedule):
    """:class:`prunekit.schedules.PolynomialDecay` that also takes tensor steps (TF MOT's results).

    Example::

        PolynomialDecay(0.2, 0.8, 100, 110, 3, 2)(tf.Variable(105))[1]  # <tf.Tensor 0.725>
    """

    def _tensor_call(self, step: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        prune = self._should_prune_in_step(step, self.begin_step, self.end_step, self.frequency)
        elapsed = tf.cast(step - self.begin_step, tf.float32)
        if self.end_step == self.begin_step:
            progress = tf.where(elapsed >= 0, 1.0, 0.0)
        else:
            progress = tf.clip_by_value(elapsed / float(self.end_step - self.begin_step), 0.0, 1.0)
        sparsity = (self.initial_sparsity - self.final_sparsity) * tf.pow(1.0 - progress, float(self.power)) + self.final_sparsity
        return prune, tf.cast(sparsity, tf.float32)
