"""The pruning state of one layer, held outside the layer's computation.

A :class:`LayerPruning` lives on the layer as the attribute ``_prunekit_pruning``: Keras ignores it
when it builds, calls or serialises the layer's config, so the model keeps its classes, layer
names and weights. It holds a boolean mask per pruned weight and the pruning step, and installs
a :class:`MaskConstraint` on each pruned variable: Keras optimizers apply variable constraints
after every update (in the compiled train step too), so a pruned weight is zeroed again after
every optimizer step and momentum cannot revive it. Masks change only at the schedule's pruning
steps, on the host, with :mod:`prunekit.masks` (exactly ``round(s * numel)`` zeros per weight).

Under ``tf.distribute`` the masks, the step and the per-weight ``applied`` counters are created
under the strategy that owns the pruned weights (:func:`distribution_scope`), so they are mirrored
like the weights. The step and the masks are written only in cross-replica context (by
:class:`~prunekit.keras.UpdatePruningStep`, from the first replica's weights), which writes the same
value to every replica; ``applied`` is written inside each replica from that replica's copy of the
step. Every replica therefore holds the same masks and zeroes the same weights.

Keras's saver walks every attribute of a layer, so ``model.save("x.keras")`` also writes this
state (masks, step, schedule) into ``model.weights.h5``; :func:`prunekit.keras.load_model`
reattaches it.
"""

from __future__ import annotations

import contextlib
import json
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras.src.backend.common import global_state
from keras.src.saving.keras_saveable import KerasSaveable

from prunekit import masks as mask_selection
from prunekit.errors import ConfigError, StateMismatchError
from prunekit.keras.unstructured.layers import is_weightless, prunable_weights
from prunekit.schedules import PruningSchedule, schedule_from_config, schedule_value

ATTRIBUTE = "_prunekit_pruning"
STATE_FORMAT = "prunekit.keras.LayerPruning"
STATE_VERSION = 1
POOLING_TYPES = ("AVG", "MAX")

MISSING_CALLBACK = (
    "an optimizer step updated pruned weight {weight!r} of layer {layer!r} but the pruning step did not "
    "advance: pass callbacks=[prunekit.keras.UpdatePruningStep()] to model.fit, or in a custom training loop "
    "call UpdatePruningStep.on_train_batch_begin() before every optimizer step (a layer pruned through "
    "keras.models.clone_model(..., clone_function=...) is shared with the original model, which needs the callback too)"
)


@dataclass(frozen=True)
class PruningSpec:
    """How one layer is pruned: TF MOT's ``prune_low_magnitude`` arguments, validated."""

    schedule: PruningSchedule
    block_size: tuple[int, int] = (1, 1)
    block_pooling_type: str = "AVG"
    sparsity_m_by_n: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.schedule, PruningSchedule):
            raise ConfigError(
                f"pruning_schedule should be a prunekit schedule (ConstantSparsity, PolynomialDecay, "
                f"IterativeSparsity, or a subclass of prunekit.keras.PruningSchedule), got {self.schedule!r}"
            )
        block = tuple(self.block_size) if isinstance(self.block_size, (list, tuple)) else self.block_size
        if not (isinstance(block, tuple) and len(block) == 2 and all(_positive_int(b) for b in block)):
            raise ConfigError(f"block_size should be two integers >= 1, got {self.block_size!r}")
        object.__setattr__(self, "block_size", block)
        if self.block_pooling_type not in POOLING_TYPES:
            raise ConfigError(f"block_pooling_type should be one of {POOLING_TYPES}, got {self.block_pooling_type!r}")
        if self.sparsity_m_by_n is not None:
            pair = tuple(self.sparsity_m_by_n) if isinstance(self.sparsity_m_by_n, (list, tuple)) else None
            if pair is None or len(pair) != 2 or not all(_positive_int(v) for v in pair) or pair[0] >= pair[1]:
                raise ConfigError(
                    f"sparsity_m_by_n should be (m, n): m zeros in every n consecutive weights with "
                    f"0 < m < n, got {self.sparsity_m_by_n!r}"
                )
            if block != (1, 1):
                raise ConfigError("use either block_size or sparsity_m_by_n, not both")
            object.__setattr__(self, "sparsity_m_by_n", pair)

    def get_config(self) -> dict[str, Any]:
        """JSON-serialisable fields (the schedule as its own config)."""
        return {
            "schedule": self.schedule.get_config(),
            "block_size": list(self.block_size),
            "block_pooling_type": self.block_pooling_type,
            "sparsity_m_by_n": None if self.sparsity_m_by_n is None else list(self.sparsity_m_by_n),
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> PruningSpec:
        """Rebuild from :meth:`get_config`."""
        return cls(
            schedule=schedule_from_config(config["schedule"]),
            block_size=tuple(config["block_size"]),
            block_pooling_type=config["block_pooling_type"],
            sparsity_m_by_n=None if config["sparsity_m_by_n"] is None else tuple(config["sparsity_m_by_n"]),
        )


def _positive_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1


def select_mask(weights: np.ndarray, sparsity: float, previous: np.ndarray | None, spec: PruningSpec, where: str) -> np.ndarray:
    """The keep-mask of one weight at ``sparsity`` under ``spec`` (``where`` names it in errors).

    Unstructured: the ``round(sparsity * numel)`` lowest ``|w|`` pruned, but at least one weight
    kept (TF MOT keeps ``max(1, round((1 - s) * numel))``: 99 % of 40 weights keeps 1). Blocks
    (2-D weights only): whole ``block_size`` blocks ranked by mean (``AVG``) or max ``|w|``; a
    shape that does not tile is padded like TF MOT's ``SAME`` pooling (edge blocks are smaller,
    their mean is over their real entries). ``sparsity_m_by_n`` ``(m, n)``: ``m`` zeros in every
    ``n`` weights along the input-channel axis (TF MOT's layout); an axis that is not a multiple
    of ``n`` is zero-padded as TF MOT pads it, and the padding counts among the zeros of the last
    group. The schedule then only times the pruning.
    """
    try:
        if spec.sparsity_m_by_n is not None:
            zeros, group = spec.sparsity_m_by_n
            if weights.ndim < 2:
                raise ConfigError(f"m-by-n sparsity needs a weight with an input-channel axis, got shape {weights.shape}")
            return _padded_nm_mask(np.abs(weights), zeros, group, weights.ndim - 2, previous)
        if spec.block_size != (1, 1):
            if weights.ndim != 2:
                raise ConfigError(
                    f"block sparsity works on 2-D weights (Dense kernels); this weight has shape {weights.shape}. "
                    "Use block_size=(1, 1) for it or exclude its layer"
                )
            return _pooled_block_mask(weights, spec.block_size, spec.block_pooling_type, sparsity, previous)
        return mask_selection.topk_mask(np.abs(weights), _keep_one(sparsity, weights.size), previous=previous)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _keep_one(sparsity: float, count: int) -> float:
    """``sparsity``, lowered so that at least one of ``count`` entries is kept (TF MOT's ``max(1, k)``)."""
    if count > 1 and round(sparsity * count) >= count:
        return (count - 1) / count
    return sparsity


def _padded_nm_mask(scores: np.ndarray, zeros: int, group: int, axis: int, previous: np.ndarray | None) -> np.ndarray:
    size = scores.shape[axis]
    pad = -size % group
    if pad:
        widths = [(0, 0)] * scores.ndim
        widths[axis] = (0, pad)
        scores = np.pad(scores, widths, constant_values=-1.0)  # below every |w|: the padding is pruned first
        if previous is not None:
            previous = np.pad(previous, widths, constant_values=False)
    keep = mask_selection.nm_mask(scores, group - zeros, group, axis=axis, previous=previous)
    return np.take(keep, np.arange(size), axis=axis)


def _pooled_block_mask(
    weights: np.ndarray, block: tuple[int, int], pooling: str, sparsity: float, previous: np.ndarray | None
) -> np.ndarray:
    rows, cols = block
    height, width = weights.shape
    pad_rows, pad_cols = -height % rows, -width % cols
    magnitudes = np.pad(np.abs(weights).astype(np.float64), ((0, pad_rows), (0, pad_cols)))
    real = np.pad(np.ones(weights.shape), ((0, pad_rows), (0, pad_cols)))
    shape = (magnitudes.shape[0] // rows, rows, magnitudes.shape[1] // cols, cols)
    tiles, counts = magnitudes.reshape(shape), real.reshape(shape).sum(axis=(1, 3))
    scores = tiles.sum(axis=(1, 3)) / counts if pooling == "AVG" else tiles.max(axis=(1, 3))
    block_previous = None
    if previous is not None:
        padded_previous = np.pad(np.asarray(previous, bool), ((0, pad_rows), (0, pad_cols)))
        block_previous = padded_previous.reshape(shape).any(axis=(1, 3))
    keep = mask_selection.topk_mask(scores, _keep_one(sparsity, scores.size), previous=block_previous)
    expanded = np.broadcast_to(keep[:, None, :, None], shape).reshape(magnitudes.shape)
    return expanded[:height, :width].copy()


class MaskConstraint:
    """A variable constraint that zeroes the pruned entries after every optimizer update.

    It first applies the variable's own constraint (if any), and checks that the pruning step
    advanced since the last update, so training without :class:`UpdatePruningStep` fails loudly.
    """

    def __init__(self, pruning: LayerPruning, index: int, inner: Any = None):
        self.pruning = pruning
        self.index = index
        self.inner = inner

    def __call__(self, value: Any) -> tf.Tensor:
        pruning = self.pruning
        mask, applied, step = pruning.masks[self.index], pruning.applied[self.index], pruning.step
        if self.inner is not None:
            value = self.inner(value)
        value = tf.convert_to_tensor(value)
        message = MISSING_CALLBACK.format(weight=pruning.weight_paths[self.index], layer=pruning.layer_name)
        if tf.executing_eagerly():
            if int(step.numpy()) <= int(applied.numpy()):
                raise ConfigError(message)
            applied.assign(step)
            return tf.where(mask, value, tf.zeros((), value.dtype))
        # string-only data keeps the Assert unguarded (no tf.cond per weight per step)
        check = tf.debugging.Assert(tf.greater(step, applied), [f"prunekit: {message}"])
        with tf.control_dependencies([check]):
            update = applied.assign(step)
        with tf.control_dependencies([update]):
            return tf.where(mask, value, tf.zeros((), value.dtype))


class LayerPruning(KerasSaveable):
    """Masks, pruning step and schedule of one layer; see the module docstring.

    Created by :func:`prunekit.keras.prune_low_magnitude`; not meant to be built by hand.
    """

    def __init__(self, layer: Any, spec: PruningSpec, step: tf.Variable | None = None):
        self._layer_ref = weakref.ref(layer)
        self.layer_name = layer.name
        self.spec = spec
        self.step = step if step is not None else new_step_variable()
        self.weights: list[Any] = []
        self.weight_paths: list[str] = []
        self.masks: list[tf.Variable] = []
        self.applied: list[tf.Variable] = []
        self._inner_constraints: list[Any] = []
        self.warned = False  # a SparsityWarning for this layer was raised (check_targets warns once)

    # KerasSaveable asks for one of Keras's object types; "Loss" makes the saver walk no attribute of ours.
    def _obj_type(self) -> str:
        return "Loss"

    def target_layer(self) -> Any:
        """The pruned layer (a method, not an attribute: Keras's saver must not walk back into it)."""
        layer = self._layer_ref()
        if layer is None:
            raise StateMismatchError(f"layer {self.layer_name!r} of this pruning state no longer exists")
        return layer

    @property
    def attached(self) -> bool:
        """Whether the masks exist and the constraints are installed."""
        return bool(self.weights)

    def attach(self) -> None:
        """Create the masks and install the constraints (the layer must be built); idempotent."""
        if self.attached:
            return
        layer = self.target_layer()
        if not layer.built:
            raise ConfigError(
                f"layer {layer.name!r} is not built yet; build the model before training it "
                "(call it on a batch, or model.build(input_shape))"
            )
        if is_weightless(layer):
            return  # TF MOT wraps weightless layers as no-ops: nothing to mask
        weights = prunable_weights(layer)
        if not weights:
            raise ConfigError(f"layer {layer.name!r} ({type(layer).__name__}) has no weights to prune")
        if self.spec.sparsity_m_by_n is not None:  # TF MOT applies m-by-n to rank-2 and rank-4 weights only
            weights = [weight for weight in weights if len(weight.shape) in (2, 4)]
            if not weights:
                return
        step = int(self.step.numpy())
        for index, weight in enumerate(weights):
            path = getattr(weight, "path", weight.name)
            select_mask(np.asarray(weight.numpy()), 0.0, None, self.spec, f"layer {layer.name!r} weight {path!r}")
            self.weight_paths.append(path)
            with distribution_scope([weight], f"layer {layer.name!r}"):
                mask = tf.Variable(tf.ones(weight.shape, tf.bool), trainable=False, name=f"{layer.name}_mask_{index}")
                applied = tf.Variable(step, dtype=tf.int64, trainable=False, name=f"{layer.name}_applied_{index}")
            self.masks.append(mask)
            self.applied.append(applied)
            self._inner_constraints.append(weight.constraint)
            weight.constraint = MaskConstraint(self, index, weight.constraint)
        self.weights = weights

    def detach(self) -> None:
        """Remove the constraints (restoring the layer's own) and forget the weights."""
        for weight, inner in zip(self.weights, self._inner_constraints):
            weight.constraint = inner
        self.weights, self.weight_paths, self.masks, self.applied, self._inner_constraints = [], [], [], [], []

    def update_masks(self, step: int) -> bool:
        """At a pruning step of the schedule, recompute the masks and zero the pruned weights."""
        prune, sparsity = schedule_value(self.spec.schedule, step)
        if not prune:
            return False
        for weight, mask, path in zip(self.weights, self.masks, self.weight_paths):
            values = np.asarray(weight.numpy())
            keep = select_mask(values, sparsity, mask.numpy(), self.spec, f"layer {self.layer_name!r} weight {path!r}")
            mask.assign(keep)
        self.apply_masks()
        return True

    def apply_masks(self) -> None:
        """Zero the pruned entries of every pruned weight now (+0.0, so gzip sees identical bytes)."""
        for weight, mask in zip(self.weights, self.masks):
            weight.assign(tf.where(mask, weight.value, tf.zeros((), weight.dtype)))

    def mask_arrays(self) -> dict[str, np.ndarray]:
        """Weight path -> boolean keep-mask."""
        return {path: mask.numpy() for path, mask in zip(self.weight_paths, self.masks)}

    def get_config(self) -> dict[str, Any]:
        """What the saved state holds besides the arrays: format, layer, weights, shapes, spec."""
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "layer": self.layer_name,
            "weights": list(self.weight_paths),
            "shapes": [list(weight.shape) for weight in self.weights],
            **self.spec.get_config(),
        }

    def save_own_variables(self, store: Any) -> None:
        """Called by Keras's saver: config (JSON bytes), step and one uint8 mask per weight."""
        store["config"] = np.frombuffer(json.dumps(self.get_config()).encode("utf-8"), dtype=np.uint8)
        store["step"] = np.asarray(int(self.step.numpy()), dtype=np.int64)
        for index, mask in enumerate(self.masks):
            store[f"mask_{index}"] = mask.numpy().astype(np.uint8)

    def load_own_variables(self, store: Any) -> None:
        """Called by Keras's loader (and :func:`prunekit.keras.load_model`): restore spec, masks and step."""
        config = read_config(store, self.layer_name)
        self.spec = PruningSpec.from_config(config)
        self.attach()
        if len(config["shapes"]) != len(self.weights):
            raise StateMismatchError(
                f"saved pruning state of layer {self.layer_name!r} has {len(config['shapes'])} masks, "
                f"but the layer has {len(self.weights)} prunable weights"
            )
        for index, (weight, mask) in enumerate(zip(self.weights, self.masks)):
            saved = np.asarray(store[f"mask_{index}"]).astype(bool)
            if saved.shape != tuple(weight.shape):
                raise StateMismatchError(
                    f"saved mask {index} of layer {self.layer_name!r} has shape {saved.shape}, "
                    f"but weight {self.weight_paths[index]!r} has shape {tuple(weight.shape)}"
                )
            mask.assign(saved)
        step = int(np.asarray(store["step"]))
        self.step.assign(step)
        for applied in self.applied:
            applied.assign(step)
        self.apply_masks()


def read_config(store: Any, where: str) -> dict[str, Any]:
    """The JSON config saved by :meth:`LayerPruning.save_own_variables`, validated."""
    try:
        config = json.loads(np.asarray(store["config"]).astype(np.uint8).tobytes().decode("utf-8"))
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        raise StateMismatchError(f"the saved pruning state of layer {where!r} is unreadable: {exc}") from None
    if config.get("format") != STATE_FORMAT or config.get("version", 0) > STATE_VERSION:
        raise StateMismatchError(
            f"the saved pruning state of layer {where!r} is {config.get('format')!r} version "
            f"{config.get('version')!r}; this prunekit reads {STATE_FORMAT!r} up to version {STATE_VERSION}"
        )
    return config


def new_step_variable(value: int = -1) -> tf.Variable:
    """A pruning-step counter: -1 before the first training batch, then the index of the current batch."""
    return tf.Variable(value, dtype=tf.int64, trainable=False, name="pruning_step")


def distribution_scope(weights: Sequence[Any], where: str) -> contextlib.AbstractContextManager:
    """The scope of the ``tf.distribute`` strategy that owns ``weights`` (no-op for single-device weights).

    Variables created inside it (a clone of the model, masks, the step) are distributed the way
    ``weights`` are, wherever the caller runs. ``where`` names the model or layer in the error
    raised when another strategy's scope is active.

    Example::

        with distribution_scope(model.weights, f"model {model.name!r}"):
            step = new_step_variable()  # mirrored if the model was built in strategy.scope()
    """
    strategy = next((s for s in (_strategy_of(weight) for weight in weights) if s is not None), None)
    if strategy is None:
        return contextlib.nullcontext()
    if tf.distribute.has_strategy() and tf.distribute.get_strategy() is not strategy:
        raise ConfigError(
            f"{where} was built under a different tf.distribute strategy than the one whose scope is active; "
            "prune it inside the scope of the strategy that built it (or outside any scope)"
        )
    return strategy.scope()


def _strategy_of(weight: Any) -> Any:
    variable = weight.value if isinstance(weight, keras.Variable) else weight  # a Keras variable wraps a tf.Variable
    if isinstance(variable, tf.distribute.DistributedValues):
        return variable.distribute_strategy
    return None


def get_pruning(layer: Any) -> LayerPruning | None:
    """The :class:`LayerPruning` attached to ``layer``, or ``None``."""
    return layer.__dict__.get(ATTRIBUTE)


def set_pruning(layer: Any, pruning: LayerPruning | None) -> None:
    """Attach (or with ``None`` remove) a layer's pruning state without Keras's attribute tracking.

    A layer that carries a state also refuses Keras 3's legacy ``.h5`` model format (see
    :class:`_LegacyH5Guard`), which would silently drop the state.
    """
    if pruning is None:
        layer.__dict__.pop(ATTRIBUTE, None)
        layer.__dict__.pop("get_config", None)
    else:
        object.__setattr__(layer, ATTRIBUTE, pruning)
        object.__setattr__(layer, "get_config", _LegacyH5Guard(layer))


H5_REFUSED = (
    "layer {layer!r} is being pruned and Keras 3's legacy .h5 model format cannot hold its pruning state "
    "(masks, step, schedule): it would be saved as a plain layer and resuming would fail. Save checkpoints "
    "as .keras (model.save('ckpt.keras'), restored with prunekit.keras.load_model), or save the final model "
    "as .h5 after prunekit.keras.strip_pruning(model)"
)


class _LegacyH5Guard:
    """A pruned layer's ``get_config``: the class's own, refused while Keras writes a legacy ``.h5`` model.

    Keras 3's ``.h5`` writer serialises configs under its ``use_legacy_config`` option and writes
    only the layers' own variables, so the pruning state would be lost silently (TF MOT's ``.h5``
    kept it in its wrapper layers). Keras opens the file before it asks for the config, so an
    empty ``.h5`` is left behind.
    """

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        # Keras's auto-config checks whether get_config is its default one; keep that answer
        self._is_default = getattr(type(layer).get_config, "_is_default", False)

    def __call__(self) -> dict[str, Any]:
        if global_state.get_global_attribute("use_legacy_config", False):
            raise ConfigError(H5_REFUSED.format(layer=self.layer.name))
        return type(self.layer).get_config(self.layer)


def prunings(model: Any, layers: Sequence[Any] | None = None) -> list[LayerPruning]:
    """Every layer pruning state inside ``model`` (or in ``layers``), in layer order."""
    from prunekit.keras.unstructured.layers import iter_layers

    candidates = list(layers) if layers is not None else [model, *iter_layers(model)]
    return [p for p in (get_pruning(layer) for layer in candidates) if p is not None]
