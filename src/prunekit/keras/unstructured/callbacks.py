"""TF MOT's two callbacks: ``UpdatePruningStep`` (required while training) and ``PruningSummaries`` (a TensorBoard)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from prunekit.core.atomic import atomic_write_text
from prunekit.errors import ConfigError
from prunekit.keras.unstructured.state import LayerPruning, prunings
from prunekit.keras.unstructured.target import check_targets
from prunekit.schedules import schedule_value


def _pruning_states(model: Any, who: str) -> list[LayerPruning]:
    if model is None:
        raise ConfigError(f"{who} has no model; Keras sets it in fit(), in a custom loop call callback.set_model(model)")
    states = prunings(model)
    if not states:
        raise ConfigError(
            f"{who}: model {model.name!r} has no pruned layers; prune it first with "
            "prunekit.keras.prune_low_magnitude(model, pruning_schedule=...)"
        )
    return states


class UpdatePruningStep(keras.callbacks.Callback):
    """Advance the pruning step before every training batch and update masks on schedule (TF MOT's).

    Step numbering is TF MOT's: a freshly pruned model is at step -1, ``on_train_begin`` moves it
    to 0 and every training batch advances it before its forward pass, so **the first batch is
    step 1** and ``PolynomialDecay(0.5, 0.8, 0, end_step=20, frequency=10)`` reaches 0.8 at the
    20th batch. A restored model continues from its saved step. ``first_step=0`` numbers the
    first batch 0 instead, as ``prunekit.torch``'s ``Pruner`` does (prunekit's own workflows use it).

    At the end of training it warns (``SparsityWarning``, once per layer) when a layer is far below
    its schedule's final sparsity; ``check_target=False`` leaves that to ``strip_pruning``, for a run
    made of several short ``fit`` calls.

    Required while training a pruned model: an optimizer step without it raises. In a custom
    loop, call it as TF MOT documents::

        step = UpdatePruningStep()
        step.set_model(model)
        step.on_train_begin()
        for x, y in dataset:
            step.on_train_batch_begin(batch=-1)
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True))
            optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        step.on_train_end()

    Example::

        model.fit(x, y, epochs=4, callbacks=[UpdatePruningStep()])
    """

    def __init__(self, first_step: int = 1, check_target: bool = True) -> None:
        super().__init__()
        if first_step not in (0, 1):
            raise ConfigError(f"first_step should be 1 (TF MOT's numbering) or 0 (prunekit.torch's), got {first_step!r}")
        if not isinstance(check_target, bool):
            raise ConfigError(f"check_target should be True or False, got {check_target!r}")
        self.first_step = first_step
        self.check_target = check_target
        self._states: list[LayerPruning] = []
        self._pending: list[LayerPruning] = []
        self._counters: dict[int, list[Any]] = {}

    def on_train_begin(self, logs: dict | None = None) -> None:
        if self.model is None:
            raise ConfigError(
                "UpdatePruningStep has no model; Keras sets it in fit(), in a custom loop call callback.set_model(model)"
            )
        self._states = prunings(self.model)
        if not self._states:  # TF MOT: nothing to do on a model without pruned layers
            self._counters = {}
            return
        steps_per_execution = getattr(self.model, "steps_per_execution", 1) or 1
        if steps_per_execution > 1:
            raise ConfigError(
                f"model {self.model.name!r} was compiled with steps_per_execution={steps_per_execution}; "
                "pruning needs a callback before every optimizer step, so compile it with steps_per_execution=1"
            )
        self._counters = {}
        self._start_steps: dict[int, int] = {}
        self._pending = []
        for state in self._states:
            if state.target_layer().built:
                state.attach()
                state.apply_masks()
            else:  # an unbuilt model (TF MOT prunes those too): Keras builds it in the first train step
                self._pending.append(state)
            if self.first_step == 1 and int(state.step.numpy()) == -1:
                state.step.assign(0)  # TF MOT: a fresh model starts at 0, so the first batch is step 1
            self._counters.setdefault(id(state.step), [state.step, int(state.step.numpy())])
            self._start_steps.setdefault(id(state.step), int(state.step.numpy()))

    def on_train_batch_begin(self, batch: int = -1, logs: dict | None = None) -> None:
        if not self._counters:
            self.on_train_begin()
        for counter in self._counters.values():
            counter[1] += 1
            counter[0].assign(counter[1])
        if self._pending:
            self._attach_built_layers()
        for state in self._states:
            state.update_masks(self._counters[id(state.step)][1])

    def _attach_built_layers(self) -> None:
        """Attach the layers Keras built in the first train step, catch up on the pruning steps they missed,
        and retrace the train step so that it applies their masks."""
        built = [state for state in self._pending if state.target_layer().built]
        if not built:
            return
        for state in built:
            step = self._counters[id(state.step)][1]
            state.attach()
            for applied in state.applied:
                applied.assign(step - 1)
            start = self._start_steps.get(id(state.step), step - 1)
            missed = [s for s in range(max(start + 1, 0), step) if state.spec.schedule.should_prune(s)]
            if missed:
                state.update_masks(missed[-1])
        self._pending = [state for state in self._pending if state not in built]
        if hasattr(self.model, "make_train_function") and getattr(self.model, "train_function", None) is not None:
            self.model.make_train_function(force=True)

    def on_epoch_end(self, batch: int = -1, logs: dict | None = None) -> None:
        """Zero the pruned weights again (TF MOT re-masks at every epoch end; custom loops call it with ``batch=-1``)."""
        for state in self._states:
            if state.attached:
                state.apply_masks()

    def on_train_end(self, logs: dict | None = None) -> None:
        """Warn (``SparsityWarning``) once if a layer ended far below its schedule's final sparsity."""
        self._counters = {}
        if self.check_target:
            check_targets(self._states, "UpdatePruningStep (end of training)")

    @property
    def step(self) -> int:
        """The pruning step of the last batch started (-1 before the first)."""
        if self._counters:
            return max(value for _, value in self._counters.values())
        states = prunings(self.model) if self.model is not None else []
        return max((int(state.step.numpy()) for state in states), default=-1)


class _Summary:
    """``tf.summary`` for Keras's ``TensorBoard`` callback, with ``scalar`` written by TensorFlow itself.

    ``tf.summary.scalar`` is implemented by the ``tensorboard`` package; without it Keras's
    callback fails at its first scalar. Scalars here are ``tf.summary.write`` events with the
    scalars plugin's metadata, which is what ``tensorboard`` writes too, so TensorBoard reads them
    either way. Everything else is ``tf.summary``'s.
    """

    def __getattr__(self, name: str) -> Any:
        return getattr(tf.summary, name)

    @staticmethod
    def scalar(name: str, data: Any, step: Any = None, description: str | None = None) -> Any:
        from tensorflow.core.framework import summary_pb2

        plugin = summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
        metadata = summary_pb2.SummaryMetadata(plugin_data=plugin, summary_description=description or "")
        value = tf.cast(tf.convert_to_tensor(data), tf.float32)
        return tf.summary.write(name, value, step=step, metadata=metadata.SerializeToString())


def _tensorboard_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


class PruningSummaries(keras.callbacks.TensorBoard):
    """A ``keras.callbacks.TensorBoard`` that also logs each pruned weight's sparsity (TF MOT's ``PruningSummaries``).

    Takes TensorBoard's arguments (``histogram_freq``, ``write_graph``, ``profile_batch``, ...) and
    logs what TensorBoard logs. At the start of every epoch, as TF MOT does, it writes the scalars
    ``<weight path>/sparsity`` and ``<layer>/target_sparsity`` at the pruning step to
    ``log_dir/metrics``; in ``fit`` also at the end of training, and every ``update_freq`` batches
    when that is a number. Each of those is also a record in :attr:`records` and a line of
    ``log_dir/pruning_summaries.jsonl``. Scalars are written by TensorFlow's ``tf.summary`` (the
    ``tensorboard`` package is needed to view them, not to write them).

    Example::

        model.fit(x, y, callbacks=[UpdatePruningStep(), PruningSummaries(log_dir="logs", profile_batch=0)])

    In a custom loop, as TF MOT's guide drives it::

        log = PruningSummaries(log_dir="logs")
        log.set_model(model)
        for epoch in range(epochs):
            log.on_epoch_begin(epoch=-1)
            ...  # the batches, with UpdatePruningStep
    """

    def __init__(self, log_dir: str | os.PathLike, update_freq: str | int = "epoch", **kwargs: Any) -> None:
        if not isinstance(log_dir, (str, os.PathLike)) or not os.fspath(log_dir):
            raise ConfigError(f"`log_dir` must be a non-empty string or path. You passed `log_dir`={log_dir!r}.")
        if update_freq not in ("epoch", "batch") and not (
            isinstance(update_freq, int) and not isinstance(update_freq, bool) and update_freq >= 1
        ):
            raise ConfigError(f"update_freq should be 'epoch', 'batch' or a number of batches >= 1, got {update_freq!r}")
        needs_tensorboard = [key for key in ("histogram_freq", "write_images", "embeddings_freq") if kwargs.get(key)]
        if needs_tensorboard and not _tensorboard_installed():
            raise ConfigError(
                f"PruningSummaries({needs_tensorboard[0]}={kwargs[needs_tensorboard[0]]!r}) writes TensorBoard "
                "histograms/images, which needs the tensorboard package: pip install tensorboard"
            )
        super().__init__(log_dir=os.fspath(log_dir), update_freq=update_freq, **kwargs)
        self._summary_module = _Summary()
        self.records: list[dict[str, Any]] = []
        self._pruning_writer: Any = None
        self._batches = 0

    def on_train_begin(self, logs: dict | None = None) -> None:
        _pruning_states(self.model, "PruningSummaries")
        self._batches = 0
        super().on_train_begin(logs)

    def on_epoch_begin(self, epoch: int = -1, logs: dict | None = None) -> None:
        """Log the pruning scalars (TF MOT logs them here; a custom loop calls it with ``epoch=-1``)."""
        if logs is not None:  # fit passes logs; a custom loop does not, and has no TensorBoard state to update
            super().on_epoch_begin(epoch, logs)
        self._log(epoch=None if epoch == -1 else epoch)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        super().on_train_batch_end(batch, logs)
        self._batches += 1
        if self.update_freq != "epoch" and self._batches % self.update_freq == 0:
            self._log(epoch=None)

    def on_train_end(self, logs: dict | None = None) -> None:
        self._log(epoch=None)  # the final sparsity, which no epoch start sees
        super().on_train_end(logs)
        if self._pruning_writer is not None:
            self._pruning_writer.close()
            self._pruning_writer = None

    def _log(self, epoch: int | None) -> None:
        states = _pruning_states(self.model, "PruningSummaries")
        step = max(0, max(int(state.step.numpy()) for state in states))
        record: dict[str, Any] = {"epoch": epoch, "step": step, "sparsity": {}, "target_sparsity": {}}
        for state in states:
            if not state.attached:
                continue  # a weightless layer marked as a no-op, or one not built yet
            for path, mask in state.mask_arrays().items():
                record["sparsity"][path] = float(1.0 - mask.mean())
            record["target_sparsity"][state.layer_name] = schedule_value(state.spec.schedule, step)[1]
        self.records.append(record)
        log_dir = Path(self.log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(log_dir / "pruning_summaries.jsonl", "".join(json.dumps(item) + "\n" for item in self.records))
        if self._pruning_writer is None:
            self._pruning_writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "metrics"))
        # TensorBoard's own writer may be recording only every update_freq batches; these always are
        with self._pruning_writer.as_default(), tf.summary.record_if(True):
            for path, value in record["sparsity"].items():
                self._summary_module.scalar(f"{path}/sparsity", value, step=step)
            for name, value in record["target_sparsity"].items():
                self._summary_module.scalar(f"{name}/target_sparsity", value, step=step)
        self._pruning_writer.flush()
