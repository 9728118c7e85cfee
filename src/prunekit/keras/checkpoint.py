"""Keras training that survives a kill: atomic checkpoints at epoch boundaries, a resume that ends bitwise identical.

The twin of :mod:`prunekit.torch.checkpoint`, with the same constructor. The pruning workflows
(``prune_one_shot``, ``prune_iteratively``, ``prune_gradually``, which take ``checkpoint=``) then
train one ``fit`` epoch at a time on an order they draw themselves, and save every ``every``
epochs all the run depends on: the model's variables (weights and the dropout seed generators'
states), the optimizer's variables, each pruned layer's masks and pruning step, the generator of
the data order, and the history so far. The file is a NumPy ``.npz`` written atomically and read
with ``allow_pickle=False``. With ``resume=True`` a later run continues from it, and on CPU ends
bitwise identical to an uninterrupted run with the same checkpoint settings. A checkpoint of
another run (other epochs, learning rate, variable shapes or ``key``) is refused with a
:class:`~prunekit.errors.StateMismatchError` naming the difference.

Example::

    ckpt = EpochCheckpoint("gradual.ckpt.npz", resume=True)
    run = prune_gradually(model, x, y, 0.9, epochs=12, checkpoint=ckpt)   # kill it, run it again
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from prunekit.core.atomic import atomic_write_bytes
from prunekit.errors import ConfigError, CorruptFileError, StateMismatchError
from prunekit.keras.unstructured.state import prunings

CHECKPOINT_FORMAT = "prunekit.keras.epoch-checkpoint"
CHECKPOINT_VERSION = 1


@dataclass
class EpochCheckpoint:
    """Where and how often a Keras pruning workflow checkpoints, and whether it resumes.

    ``every``: epochs between checkpoints. ``resume``: continue from ``path`` when it exists
    (without it an existing checkpoint is refused, never overwritten). ``key``: anything that
    must match for a resume to be valid (a recipe hash, the sparsity target...). ``keep``: leave
    the checkpoint in place after a finished run (by default it is removed then).

    Example::

        prune_one_shot(model, x, y, 0.8, checkpoint=EpochCheckpoint("one-shot.npz", every=2, resume=True))
    """

    path: str | os.PathLike[str]
    every: int = 1
    resume: bool = False
    key: Mapping[str, Any] = field(default_factory=dict)
    keep: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.every, int) or isinstance(self.every, bool) or self.every < 1:
            raise ConfigError(f"EpochCheckpoint.every should be an integer >= 1 (epochs), got {self.every!r}")
        self.path = Path(self.path)

    def _identity(self, model: keras.Model, epochs: int, lr: float) -> dict[str, Any]:
        shapes = [list(variable.shape) for variable in model.variables]  # in order: paths carry global counters
        return {"epochs": epochs, "lr": float(lr), "shapes": shapes, "key": {str(k): repr(v) for k, v in self.key.items()}}

    def restore(self, model: keras.Model, order: np.random.Generator, *, epochs: int, lr: float) -> tuple[int, list[dict]]:
        """Load the checkpoint into the compiled, pruned ``model`` and the data-order generator; returns
        ``(epochs done, history)`` (``(0, [])`` to start fresh)."""
        path = Path(self.path)
        if not path.exists():
            return 0, []
        if not self.resume:
            raise ConfigError(
                f"checkpoint {path} exists; pass resume=True (--resume) to continue that run, or delete it to start over"
            )
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
            meta = json.loads(bytes(arrays.pop("meta")).decode("utf-8"))
        except (OSError, ValueError, KeyError, UnicodeDecodeError) as exc:
            raise CorruptFileError(f"checkpoint {path} is not readable: {str(exc).splitlines()[0][:200]}") from None
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise CorruptFileError(f"{path} is not a prunekit Keras epoch checkpoint")
        expected = self._identity(model, epochs, lr)
        for name in ("epochs", "lr", "key", "shapes"):
            if meta["identity"].get(name) != expected[name]:
                raise StateMismatchError(
                    f"checkpoint {path} belongs to another run: its {name} is {meta['identity'].get(name)!r}"[:400]
                    + f", this run's is {expected[name]!r}"[:300]
                    + "; use another checkpoint path or delete it"
                )
        optimizer = _built_optimizer(model)
        for prefix, variables in (("model", model.variables), ("optimizer", optimizer.variables)):
            for index, variable in enumerate(variables):
                variable.assign(arrays[f"{prefix}/{index}"])
        for index, state in enumerate(prunings(model)):
            state.attach()
            state.step.assign(int(arrays[f"step/{index}"]))
            for number, (mask, applied) in enumerate(zip(state.masks, state.applied)):
                mask.assign(arrays[f"mask/{index}/{number}"].astype(bool))
                applied.assign(int(arrays[f"applied/{index}/{number}"]))
            state.apply_masks()
        order.bit_generator.state = meta["order"]
        return int(meta["epoch"]), [dict(record) for record in meta["history"]]

    def save(
        self, epoch: int, model: keras.Model, order: np.random.Generator, history: list[dict], *, epochs: int, lr: float
    ) -> None:
        """Write the checkpoint after ``epoch`` epochs when it is due (every ``every`` epochs, not after the last)."""
        if epoch % self.every or epoch >= epochs:
            return
        meta = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "identity": self._identity(model, epochs, lr),
            "epoch": epoch,
            "order": order.bit_generator.state,
            "history": history,
        }
        arrays: dict[str, np.ndarray] = {"meta": np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)}
        for prefix, variables in (("model", model.variables), ("optimizer", _built_optimizer(model).variables)):
            arrays.update({f"{prefix}/{index}": np.asarray(v.numpy()) for index, v in enumerate(variables)})
        for index, state in enumerate(prunings(model)):
            arrays[f"step/{index}"] = np.asarray(int(state.step.numpy()), dtype=np.int64)
            for number, (mask, applied) in enumerate(zip(state.masks, state.applied)):
                arrays[f"mask/{index}/{number}"] = mask.numpy().astype(np.uint8)
                arrays[f"applied/{index}/{number}"] = np.asarray(int(applied.numpy()), dtype=np.int64)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write_bytes(Path(self.path), buffer.getvalue())

    def finish(self) -> None:
        """The run completed: remove the checkpoint (unless ``keep``)."""
        if not self.keep:
            Path(self.path).unlink(missing_ok=True)


def _built_optimizer(model: keras.Model) -> Any:
    """The compiled model's optimizer with its variables created (they are made lazily at the first step)."""
    optimizer = model.optimizer
    if optimizer is None:
        raise ConfigError(f"model {model.name!r} is not compiled; checkpoints hold the optimizer's state")
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    return optimizer
