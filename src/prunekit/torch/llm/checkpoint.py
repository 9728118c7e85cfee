"""LLM pruning that survives a kill: the pruned blocks saved as they are done, and a resume at the next block.

Layer-by-layer pruning is a loop over decoder blocks, so its natural checkpoint is "blocks 0..k-1
are pruned": :class:`BlockCheckpoint` is a directory holding one safetensors file per finished
block and a ``state.json`` (written last, atomically) naming how many are done, every layer's
target and achieved sparsity, and what identifies the run (method and options, sparsity, pattern,
ratios, skip globs, the calibration tokens' hash, the model's tensor shapes). A resumed run loads
the finished blocks, replays them on the calibration activations (a forward pass, as the first run
did after pruning each), and continues at block k; on CPU the result is bitwise that of an
uninterrupted run. Another run's checkpoint is refused naming the difference.

Example::

    prune(model, "train.txt", tokenizer=tok, method="wanda", checkpoint=BlockCheckpoint("out.partial", resume=True))
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from prunekit.core.atomic import atomic_path, atomic_write_text
from prunekit.errors import ConfigError, CorruptFileError, StateMismatchError

CHECKPOINT_FORMAT = "prunekit.llm.block-checkpoint"
CHECKPOINT_VERSION = 1


@dataclass
class BlockCheckpoint:
    """Where layer-by-layer LLM pruning checkpoints, how often (``every`` blocks) and whether it resumes.

    Without ``resume`` an existing checkpoint is refused, never overwritten; ``keep`` leaves it in
    place once the run is complete (by default it is removed then).

    Example::

        BlockCheckpoint("llama-wanda.partial", every=2, resume=True)
    """

    path: str | os.PathLike[str]
    every: int = 1
    resume: bool = False
    keep: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.every, int) or isinstance(self.every, bool) or self.every < 1:
            raise ConfigError(f"BlockCheckpoint.every should be an integer >= 1 (blocks), got {self.every!r}")
        self.path = Path(self.path)

    @property
    def _state(self) -> Path:
        return Path(self.path) / "state.json"

    def restore(self, blocks: list[nn.Module], identity: dict[str, Any]) -> tuple[int, dict[str, float], dict[str, float]]:
        """Load the finished blocks into ``blocks``; returns ``(blocks done, targets, achieved)`` (0 to start fresh)."""
        if not self._state.exists():
            if Path(self.path).exists() and any(Path(self.path).iterdir()):
                raise CorruptFileError(f"checkpoint directory {self.path} has block files but no state.json; delete it")
            return 0, {}, {}
        if not self.resume:
            raise ConfigError(
                f"checkpoint {self.path} exists; pass resume=True (--resume) to continue that run, or delete it to start over"
            )
        try:
            state = json.loads(self._state.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CorruptFileError(f"checkpoint {self._state} is not readable: {exc}") from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise CorruptFileError(f"{self._state} is not a prunekit LLM block checkpoint")
        for name, value in identity.items():
            if state["identity"].get(name) != value:
                raise StateMismatchError(
                    f"checkpoint {self.path} belongs to another run: its {name} is {state['identity'].get(name)!r}"[:400]
                    + f", this run's is {value!r}"[:300]
                    + "; use another checkpoint or delete it"
                )
        done = int(state["blocks_done"])
        for index in range(done):
            file = Path(self.path) / _block_file(index)
            try:
                saved = load_file(str(file))
            except Exception as exc:  # safetensors raises several types for a missing or truncated file
                raise CorruptFileError(f"checkpoint block file {file} is not readable: {str(exc)[:200]}") from None
            own = blocks[index].state_dict()
            if saved.keys() != own.keys() or any(saved[k].shape != own[k].shape for k in own):
                raise StateMismatchError(f"checkpoint block file {file} does not fit block {index} of this model")
            with torch.no_grad():
                for key, tensor in own.items():
                    tensor.copy_(saved[key])
        return done, dict(state["targets"]), dict(state["achieved"])

    def save(
        self,
        done: int,
        total: int,
        blocks: list[nn.Module],
        identity: dict[str, Any],
        targets: dict[str, float],
        achieved: dict[str, float],
    ) -> None:
        """After ``done`` blocks, write the blocks finished since the last save and then the state (when due)."""
        if done % self.every and done < total:
            return
        folder = Path(self.path)
        folder.mkdir(parents=True, exist_ok=True)
        previous = json.loads(self._state.read_text(encoding="utf-8"))["blocks_done"] if self._state.exists() else 0
        for index in range(previous, done):
            with atomic_path(folder / _block_file(index)) as tmp:
                save_file({k: v.detach().cpu().clone() for k, v in blocks[index].state_dict().items()}, str(tmp))
        state = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "identity": identity,
            "blocks_done": done,
            "targets": targets,
            "achieved": achieved,
        }
        atomic_write_text(self._state, json.dumps(state, indent=1) + "\n")  # last: the blocks it names exist

    def finish(self) -> None:
        """The run completed: remove the checkpoint (unless ``keep``)."""
        if not self.keep:
            shutil.rmtree(self.path, ignore_errors=True)


def _block_file(index: int) -> str:
    return f"block-{index:05d}.safetensors"
