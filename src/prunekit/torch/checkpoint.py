"""Training that survives a kill: atomic checkpoints at epoch boundaries, and a resume that ends bitwise identical.

:func:`~prunekit.torch.training.fit` (and so ``prune_one_shot``, ``prune_iteratively``,
``prune_gradually`` and ``train_sparse``, which take ``checkpoint=`` among their options) saves,
every ``every`` epochs, everything the rest of the run depends on: the model's parameters and
buffers, the optimizer state, the pruner's masks and schedule step, the torch RNG state, the
data loader's shuffling generator, and the history so far. The file is written atomically (a
kill mid-write leaves the previous checkpoint) and read with ``torch.load(weights_only=True)``.
With ``resume=True`` a later run continues from it; on CPU the final model is bitwise identical
to an uninterrupted run. A checkpoint of another run (other epochs, learning rate, model shapes
or ``key``) is refused with a :class:`~prunekit.errors.StateMismatchError` naming the difference.

Example::

    ckpt = EpochCheckpoint("gradual.ckpt", resume=True)
    run = prune_gradually(model, make_loader(x, y), 0.9, epochs=12, checkpoint=ckpt)   # kill it, run it again
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.core.atomic import atomic_path
from prunekit.errors import ConfigError, CorruptFileError, StateMismatchError

CHECKPOINT_FORMAT = "prunekit.torch.epoch-checkpoint"
CHECKPOINT_VERSION = 1


def _generators(loader: Iterable) -> list[torch.Generator]:
    """The torch generators that decide a loader's order (its own and its sampler's), deduplicated."""
    found: list[torch.Generator] = []
    for owner in (loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        generator = getattr(owner, "generator", None)
        if isinstance(generator, torch.Generator) and all(generator is not g for g in found):
            found.append(generator)
    sampler = getattr(getattr(loader, "batch_sampler", None), "sampler", None)
    generator = getattr(sampler, "generator", None)
    if isinstance(generator, torch.Generator) and all(generator is not g for g in found):
        found.append(generator)
    return found


@dataclass
class EpochCheckpoint:
    """Where and how often :func:`~prunekit.torch.training.fit` checkpoints, and whether it resumes.

    ``every``: epochs between checkpoints. ``resume``: continue from ``path`` when it exists
    (without it an existing checkpoint is refused, never overwritten). ``key``: anything that
    must match for a resume to be valid (a recipe hash, the sparsity target...). ``keep``: leave
    the checkpoint in place after a finished run (by default it is removed then).

    Example::

        fit(model, loader, epochs=10, checkpoint=EpochCheckpoint("fit.ckpt", every=2, resume=True))
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

    def _identity(self, model: nn.Module, epochs: int, lr: float) -> dict[str, Any]:
        shapes = {name: list(t.shape) for name, t in model.state_dict().items()}
        return {"epochs": epochs, "lr": float(lr), "shapes": shapes, "key": {str(k): repr(v) for k, v in self.key.items()}}

    def restore(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        pruner: Any,
        loader: Iterable,
        *,
        epochs: int,
        lr: float,
    ) -> tuple[int, list[dict[str, float]]]:
        """Load the checkpoint into the live objects; returns ``(epochs done, history)`` (``(0, [])`` to start fresh)."""
        path = Path(self.path)
        if not path.exists():
            return 0, []
        if not self.resume:
            raise ConfigError(
                f"checkpoint {path} exists; pass resume=True (--resume) to continue that run, or delete it to start over"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch.load raises many types for a truncated or foreign file
            raise CorruptFileError(f"checkpoint {path} is not readable: {str(exc).splitlines()[0][:200]}") from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise CorruptFileError(f"{path} is not a prunekit epoch checkpoint")
        expected = self._identity(model, epochs, lr)
        for field_name in ("epochs", "lr", "key", "shapes"):
            if state["identity"].get(field_name) != expected[field_name]:
                raise StateMismatchError(
                    f"checkpoint {path} belongs to another run: its {field_name} is {state['identity'].get(field_name)!r}"[:400]
                    + f", this run's is {expected[field_name]!r}"[:300]
                    + "; use another checkpoint path or delete it"
                )
        with torch.no_grad():
            for name, tensor in model.state_dict().items():
                tensor.copy_(state["model"][name])
        if pruner is not None:
            pruner.load_state_dict(state["pruner"])  # before the optimizer: it zeroes pruned optimizer state
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        generators = _generators(loader)
        if len(generators) != len(state["loader_generators"]):
            raise StateMismatchError(f"checkpoint {path} was saved with another kind of data loader")
        for generator, saved in zip(generators, state["loader_generators"]):
            generator.set_state(saved)
        return int(state["epoch"]), [dict(record) for record in state["history"]]

    def save(
        self,
        epoch: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        pruner: Any,
        loader: Iterable,
        history: list[dict[str, float]],
        *,
        epochs: int,
        lr: float,
    ) -> None:
        """Write the checkpoint after ``epoch`` epochs when it is due (every ``every`` epochs, not after the last)."""
        if epoch % self.every or epoch >= epochs:
            return
        state = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "identity": self._identity(model, epochs, lr),
            "epoch": epoch,
            "model": {name: t.detach().cpu().clone() for name, t in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "pruner": pruner.state_dict() if pruner is not None else None,
            "rng": torch.get_rng_state(),
            "loader_generators": [g.get_state() for g in _generators(loader)],
            "history": [dict(record) for record in history],
        }
        with atomic_path(self.path) as tmp:
            torch.save(state, tmp)

    def finish(self) -> None:
        """The run completed: remove the checkpoint (unless ``keep``)."""
        if not self.keep:
            Path(self.path).unlink(missing_ok=True)
