"""Dynamic sparse training for Keras 3: the ``DynamicSparsity`` callback (SET, RigL), twin of the PyTorch ``DynamicPruner``.

:func:`prune_sparse` marks a model's layers for pruning to a sparsity (``uniform``,
``erdos_renyi`` or ``erdos_renyi_kernel`` across layers) at the first training step;
:class:`DynamicSparsity` replaces :class:`~prunekit.keras.UpdatePruningStep` and, every
``update_interval`` steps until ``end_step``, drops the smallest-magnitude active weights of each
layer and regrows as many: at random (``regrow="set"``) or where the gradient is largest
(``regrow="rigl"``). The masks are chosen by :mod:`prunekit.dynamic`, the same code as PyTorch's,
so both backends move the same connections given the same weights and gradients.

Keras's compiled train step keeps no gradient for a callback, so RigL computes one, only on update
steps: one forward and backward pass of the compiled loss on the next batch of ``data`` (the
model's non-trainable state, such as BatchNorm statistics, is restored after it). Regrown weights
start at exactly 0 and their optimizer slots (momentum, Adam moments) are zeroed. Per update,
:attr:`DynamicSparsity.history` records the dropped and regrown counts per weight and the mask
turnover; ``turnover``, ``dropped`` and ``regrown`` (per epoch) are added to ``model.fit``'s History.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from prunekit import dynamic
from prunekit.errors import ConfigError
from prunekit.keras.unstructured.callbacks import UpdatePruningStep
from prunekit.keras.unstructured.layers import prunable_weights
from prunekit.keras.unstructured.pruning import prune_low_magnitude, strip_pruning
from prunekit.keras.unstructured.state import LayerPruning, prunings
from prunekit.methods.contract import PruningRun, TrainJob
from prunekit.schedules import ConstantSparsity, PolynomialDecay

SCOPES = ("layer", "global")


def _channel_first(shape: Sequence[int]) -> tuple[int, ...]:
    """A Keras kernel shape ``(*kernel, in, out)`` as ``(out, in, *kernel)``."""
    shape = tuple(int(d) for d in shape)
    if len(shape) < 2:
        return shape
    return (shape[-1], shape[-2], *shape[:-2])


def prune_sparse(
    model: keras.Model,
    sparsity: float,
    *,
    distribution: str = "uniform",
    exclude: Sequence[str] = (),
    inplace: bool = False,
    block_size: tuple[int, int] = (1, 1),
    block_pooling_type: str = "AVG",
    sparsity_m_by_n: tuple[int, int] | None = None,
) -> keras.Model:
    """Mark ``model`` for pruning to ``sparsity`` at the first training step, spread by ``distribution``.

    Like :func:`~prunekit.keras.prune_low_magnitude` with ``ConstantSparsity(s, 0, 0, 1)`` per
    layer: ``"uniform"`` gives every layer ``sparsity``; ``"erdos_renyi"`` and
    ``"erdos_renyi_kernel"`` give small layers more density and large ones less, for the same
    total (see :func:`prunekit.dynamic.layer_sparsities`). Train it with :class:`DynamicSparsity`.

    Example::

        sparse = prune_sparse(model, 0.95, distribution="erdos_renyi_kernel")
    """
    if distribution != "uniform" and (block_size != (1, 1) or sparsity_m_by_n is not None):
        raise ConfigError(f"distribution={distribution!r} sets each layer's sparsity; it needs unstructured pruning")
    schedule = ConstantSparsity(sparsity, begin_step=0, end_step=0, frequency=1)
    pruned = prune_low_magnitude(
        model,
        pruning_schedule=schedule,
        block_size=block_size,
        block_pooling_type=block_pooling_type,
        sparsity_m_by_n=sparsity_m_by_n,
        exclude=exclude,
        inplace=inplace,
    )
    if distribution == "uniform":
        return pruned
    states = [state for state in prunings(pruned) if prunable_weights(state.target_layer())]  # not no-op layers
    shapes: dict[tuple[str, int], tuple[int, ...]] = {}
    for state in states:
        for index, weight in enumerate(prunable_weights(state.target_layer())):
            shapes[(state.layer_name, index)] = _channel_first(weight.shape)
    shares = dynamic.layer_sparsities(shapes, sparsity, distribution)
    for state in states:
        own = [(key, int(np.prod(shapes[key]))) for key in shapes if key[0] == state.layer_name]
        share = float(sum(shares[key] * size for key, size in own)) / sum(size for _, size in own)
        state.spec = dataclasses.replace(state.spec, schedule=ConstantSparsity(share, begin_step=0, end_step=0, frequency=1))
    return pruned


def _constraint(state: LayerPruning, weight_ndim: int) -> dynamic.Constraint:
    spec = state.spec
    if spec.sparsity_m_by_n is not None:
        zeros, group = spec.sparsity_m_by_n
        return dynamic.Constraint(nm=(group - zeros, group, weight_ndim - 2))
    if spec.block_size != (1, 1):
        return dynamic.Constraint(block=spec.block_size, pooling="l1" if spec.block_pooling_type == "AVG" else "max")
    return dynamic.UNCONSTRAINED


def _batches(data: Any, batch_size: int, seed: int) -> Iterator[tuple[Any, Any]]:
    """Endless ``(x, y)`` batches from arrays ``(x, y)`` (shuffled per pass) or a ``tf.data.Dataset`` of batches."""
    if isinstance(data, tf.data.Dataset):
        while True:
            yield from data
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise ConfigError("data should be (x, y) arrays or a tf.data.Dataset of (x, y) batches")
    x, y = np.asarray(data[0]), np.asarray(data[1])
    if len(x) != len(y) or len(x) == 0:
        raise ConfigError(f"data: x has {len(x)} samples and y {len(y)}; they should match and not be empty")
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch_size):
            index = order[start : start + batch_size]
            yield x[index], y[index]


class DynamicSparsity(UpdatePruningStep):
    """``UpdatePruningStep`` that also drops and regrows weights (SET or RigL) at fixed sparsity.

    Args:
        regrow: ``"set"`` (random regrowth) or ``"rigl"`` (regrow the largest ``|grad|``).
        end_step: no update at or after this step; the drop fraction decays to 0 there.
        update_interval: steps between updates (>= 1).
        drop_fraction: fraction of each layer's active weights moved at the first update, in (0, 1).
        begin_step: first update; default one ``update_interval`` after every layer's schedule
            reached its final sparsity.
        scope: ``"layer"`` (each weight keeps its count) or ``"global"`` (all weights pooled).
        data: for RigL, ``(x, y)`` arrays or a ``tf.data.Dataset`` of batches; a batch of it gives
            the dense gradient on each update step (the model must be compiled with its loss).
        batch_size: the batch size drawn from ``(x, y)`` arrays.
        seed: seeds SET's random scores and the order of ``data``.

    Example::

        sparse = prune_sparse(model, 0.9)
        sparse.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        sparse.fit(x, y, epochs=20, callbacks=[DynamicSparsity("rigl", end_step=300, update_interval=20, data=(x, y))])
    """

    def __init__(
        self,
        regrow: str = dynamic.RIGL,
        *,
        end_step: int,
        update_interval: int = 100,
        drop_fraction: float = 0.3,
        begin_step: int | None = None,
        scope: str = "layer",
        data: Any = None,
        batch_size: int = 64,
        seed: int = 0,
    ):
        super().__init__(first_step=0)  # RigL steps count from 0, like prunekit.torch
        self.regrowth = dynamic.Regrowth(regrow, end_step, update_interval, drop_fraction, begin_step)
        if scope not in SCOPES:
            raise ConfigError(f"scope should be one of {SCOPES}, got {scope!r}")
        if regrow == dynamic.RIGL and data is None:
            raise ConfigError(
                "regrow='rigl' computes the dense gradient on update steps from a batch of data: pass "
                "DynamicSparsity(..., data=(x_train, y_train)) or a tf.data.Dataset of (x, y) batches"
            )
        self.scope = scope
        self.seed = seed
        self._data = None if data is None else _batches(data, batch_size, seed)
        self.history: list[dict[str, Any]] = []
        self._initial: dict[str, np.ndarray] | None = None
        self._resolved = False
        self._epoch_start = 0

    # ----------------------------------------------------------------- callback hooks
    def on_train_begin(self, logs: dict | None = None) -> None:
        super().on_train_begin(logs)
        if not self._resolved:
            self._resolve_begin()
            self._resolved = True

    def on_train_batch_begin(self, batch: int = -1, logs: dict | None = None) -> None:
        super().on_train_batch_begin(batch, logs)
        step = self.step
        if self.regrowth.is_update(step):
            self.update(step)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch_start = len(self.history)

    def on_epoch_end(self, batch: int = -1, logs: dict | None = None) -> None:
        super().on_epoch_end(batch, logs)
        if logs is None:
            return
        inside = self.history[self._epoch_start :]
        logs["dropped"] = float(sum(sum(u["dropped"].values()) for u in inside))
        logs["regrown"] = float(sum(sum(u["regrown"].values()) for u in inside))
        logs["turnover"] = float(self.history[-1]["turnover"]) if self.history else 0.0

    # ----------------------------------------------------------------- regrowth
    def _resolve_begin(self) -> None:
        regrowth = self.regrowth
        schedules = {state.layer_name: state.spec.schedule for state in self._states if state.attached}  # not no-op layers
        if regrowth.begin_step is None:
            start = max(dynamic.regrowth_start(s.sparsity_at, s.final_sparsity, regrowth.end_step) for s in schedules.values())
            begin = start + regrowth.update_interval
            if begin >= regrowth.end_step:
                raise ConfigError(
                    f"the pruning schedule reaches its final sparsity at step {start}, so the first update (step "
                    f"{begin}) is not before end_step {regrowth.end_step}; raise end_step"
                )
            self.regrowth = regrowth = dataclasses.replace(regrowth, begin_step=begin)
        for name, schedule in schedules.items():
            dynamic.check_constant_sparsity(
                schedule.sparsity_at,
                schedule.final_sparsity,
                regrowth.first_step,
                regrowth.end_step,
                f"the schedule of layer {name!r}",
            )
        for state in self._states:
            for weight, path in zip(state.weights, state.weight_paths):
                if state.spec.sparsity_m_by_n is None:
                    size = int(np.prod(weight.shape))
                    if state.spec.block_size != (1, 1):
                        size //= state.spec.block_size[0] * state.spec.block_size[1]
                    dynamic.check_layer_share(path, size, state.spec.schedule.final_sparsity, "weight")

    def _gradients(self, weights: list[Any]) -> list[np.ndarray]:
        model = self.model
        if getattr(model, "optimizer", None) is None or not getattr(model, "compiled", False):
            raise ConfigError(f"RigL computes the gradient of the compiled loss: compile model {model.name!r} first")
        if self._data is None:
            raise ConfigError("RigL needs data=(x, y) to compute its gradient")
        x, y = next(self._data)
        saved = [v.numpy() for v in model.non_trainable_variables]
        with tf.GradientTape() as tape:
            prediction = model(x, training=True)
            loss = model.compute_loss(x=x, y=y, y_pred=prediction)
        grads = tape.gradient(loss, weights)
        for variable, value in zip(model.non_trainable_variables, saved):
            variable.assign(value)
        missing = [w.path for w, g in zip(weights, grads) if g is None]
        if missing:
            raise ConfigError(f"RigL: the loss has no gradient for pruned weight(s) {missing}")
        return [np.abs(np.asarray(g)) for g in grads]

    def update(self, step: int, gradients: Mapping[str, np.ndarray] | None = None) -> dict[str, dynamic.LayerUpdate]:
        """Drop and regrow now (the callback calls it on update steps); returns each weight's update.

        ``gradients`` (weight path -> array) replaces RigL's computed gradient, for custom loops.
        """
        states = self._states or prunings(self.model)
        entries = [
            (state, weight, mask, path)
            for state in states
            for weight, mask, path in zip(state.weights, state.masks, state.weight_paths)
        ]
        masks = {path: mask.numpy() for _, _, mask, path in entries}
        if self._initial is None:
            self._initial = {path: mask.copy() for path, mask in masks.items()}
        values = {path: np.asarray(weight.numpy()) for _, weight, _, path in entries}
        if self.regrowth.method == dynamic.SET:
            grow = {path: dynamic.random_scores(self.seed, step, path, values[path].shape) for path in values}
        elif gradients is not None:
            grow = {path: np.abs(np.asarray(gradients[path])) for path in values}
        else:
            grow = dict(zip(values, self._gradients([weight for _, weight, _, _ in entries])))
        fraction = self.regrowth.drop_fraction_at(step)
        constraints = {path: _constraint(state, len(weight.shape)) for state, weight, _, path in entries}
        if self.scope == "global":
            if len(set(constraints.values())) > 1:
                raise ConfigError("scope='global' regrowth needs one pattern for every pruned layer")
            updates = dynamic.regrow(masks, values, grow, fraction, pooled=True, constraint=next(iter(constraints.values())))
        else:
            updates = {}
            for path in masks:
                updates.update(dynamic.regrow({path: masks[path]}, values, grow, fraction, constraint=constraints[path]))
        optimizer = getattr(self.model, "optimizer", None)
        for _, weight, mask, path in entries:
            update = updates[path]
            mask.assign(update.mask)
            if update.regrown:
                grown = tf.constant(update.regrown_mask)
                weight.assign(tf.where(grown, tf.zeros((), weight.dtype), weight.value))
                for slot in _slots(optimizer, weight):
                    slot.assign(tf.where(grown, tf.zeros((), slot.dtype), slot.value))
        for state in states:
            state.apply_masks()
        current = {path: updates[path].mask for path in masks}
        self.history.append(
            {
                "step": step,
                "drop_fraction": fraction,
                "dropped": {p: updates[p].dropped for p in masks},
                "regrown": {p: updates[p].regrown for p in masks},
                "nonzeros": {p: updates[p].nonzeros for p in masks},
                "turnover": dynamic.turnover(self._initial, current),
            }
        )
        return updates


def _slots(optimizer: Any, weight: Any) -> list[Any]:
    """The optimizer's per-weight slot variables (momentum, Adam moments) of ``weight``.

    Keras names them ``{weight.path with '/' -> '_'}_{slot}`` (``add_variable_from_reference``).
    """
    if optimizer is None or not getattr(optimizer, "built", False):
        return []
    prefix = weight.path.replace("/", "_") + "_"
    return [v for v in optimizer.variables if tuple(v.shape) == tuple(weight.shape) and v.name.startswith(prefix)]


def train_sparse(
    model: keras.Model,
    x: Any,
    y: Any,
    sparsity: float,
    *,
    regrow: str = dynamic.RIGL,
    epochs: int = 12,
    lr: float = 1e-3,
    batch_size: int = 64,
    update_interval: int | None = None,
    drop_fraction: float = 0.3,
    end_fraction: float = 0.75,
    distribution: str = "uniform",
    gradual_epochs: int = 0,
    scope: str = "layer",
    exclude: Sequence[str] = (),
    seed: int = 0,
    progress: bool = False,
) -> PruningRun:
    """Train a classifier (logits output) sparse from the first step with SET or RigL; the Keras twin of
    :func:`prunekit.torch.unstructured.dynamic_training.train_sparse` (Adam, sparse categorical cross-entropy).

    With ``gradual_epochs > 0`` sparsity rises along a cubic polynomial over those epochs (from a
    pretrained model, say) before regrowth starts. Returns the stripped model (a clone) and one
    history record per epoch with ``turnover``, ``dropped`` and ``regrown``.

    Example::

        run = train_sparse(digits_mlp(), split.x_train, split.y_train, 0.95, regrow="rigl", epochs=30)
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs should be an integer >= 1, got {epochs!r}")
    if not 0.0 < float(end_fraction) <= 1.0:
        raise ConfigError(f"end_fraction should be in (0, 1], the share of training with regrowth, got {end_fraction!r}")
    keras.utils.set_random_seed(seed)
    steps_per_epoch = -(-len(x) // batch_size)
    if not isinstance(gradual_epochs, int) or not 0 <= gradual_epochs < epochs:
        raise ConfigError(f"gradual_epochs should be an integer in [0, epochs={epochs}), got {gradual_epochs!r}")
    if gradual_epochs:
        if distribution != "uniform":
            raise ConfigError(f"distribution={distribution!r} works when training sparse from scratch (gradual_epochs=0)")
        frequency = max(1, steps_per_epoch // 4)
        end = frequency * max(1, (gradual_epochs * steps_per_epoch) // frequency)
        schedule = PolynomialDecay(0.0, sparsity, begin_step=0, end_step=end, frequency=frequency)
        sparse = prune_low_magnitude(model, pruning_schedule=schedule, exclude=exclude)
    else:
        sparse = prune_sparse(model, sparsity, distribution=distribution, exclude=exclude)
    sparse.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    callback = DynamicSparsity(
        regrow,
        end_step=max(1, int(end_fraction * epochs * steps_per_epoch)),
        update_interval=update_interval or max(1, steps_per_epoch // 2),
        drop_fraction=drop_fraction,
        scope=scope,
        data=(x, y) if regrow == dynamic.RIGL else None,
        batch_size=batch_size,
        seed=seed,
    )
    fitted = sparse.fit(x, y, batch_size=batch_size, epochs=epochs, callbacks=[callback], verbose=1 if progress else 0)
    kernels = [np.asarray(w.numpy()) for state in prunings(sparse) for w in state.weights]
    achieved = sum(int((k == 0).sum()) for k in kernels) / max(1, sum(k.size for k in kernels))
    stripped = strip_pruning(sparse)
    records = fitted.history
    count = len(next(iter(records.values()), []))
    history = [{"epoch": i + 1, **{key: float(values[i]) for key, values in records.items()}} for i in range(count)]
    return PruningRun(stripped, None, history, achieved)


def _job(job: TrainJob, regrow: str) -> PruningRun:
    options = job.options
    if options.get("gradual_epochs"):
        raise ConfigError(
            "gradual_epochs is not supported by the Keras handler yet; train sparse from scratch (gradual_epochs: 0)"
        )
    return train_sparse(
        job.model,
        job.x,
        job.y,
        job.amount,
        regrow=regrow,
        epochs=options["epochs"],
        lr=options["lr"],
        batch_size=job.batch_size,
        update_interval=options["update_interval"] or None,
        drop_fraction=options["drop_fraction"],
        end_fraction=options["end_fraction"],
        distribution=options["distribution"],
        gradual_epochs=options["gradual_epochs"],
        scope=options["scope"],
        exclude=tuple(options["exclude"]),
        seed=job.seed,
        progress=job.progress,
    )


def rigl_job(job: TrainJob) -> PruningRun:
    """Handler (kind ``"dynamic"``): :func:`train_sparse` with RigL regrowth."""
    return _job(job, dynamic.RIGL)


def set_job(job: TrainJob) -> PruningRun:
    """Handler (kind ``"dynamic"``): :func:`train_sparse` with SET (random) regrowth."""
    return _job(job, dynamic.SET)
