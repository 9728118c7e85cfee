"""Depth pruning: remove whole decoder blocks, ranked by block influence (ShortGPT) or simply the last ones.

A block's influence is ``1 - cos(x_in, x_out)`` of the hidden states entering and leaving it,
averaged over the calibration tokens: a block that barely turns the residual stream matters
least. Removal edits the model in place: the ``ModuleList`` loses the blocks, the config's
``num_hidden_layers`` (and any per-layer list in the config, such as ``layer_types``) shrinks,
and every ``layer_idx`` attribute is renumbered, so ``generate()`` with a KV cache works and
``save_pretrained`` output reloads with ``from_pretrained``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.torch.llm.calibration import CalibrationSource
from prunekit.torch.llm.capture import call_block, capture_block_inputs, on_device
from prunekit.torch.llm.discovery import find_decoder_stack
from prunekit.torch.llm.memory import default_batch_size, resolve_device
from prunekit.torch.llm.sequential import prepare_tokens

CRITERIA = ("influence", "last")


@dataclass
class DepthResult:
    """Which blocks were removed (original indices), every block's influence, and the blocks left."""

    removed: list[int]
    influence: list[float]
    criterion: str
    blocks_left: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "removed": self.removed,
            "influence": self.influence,
            "criterion": self.criterion,
            "blocks_left": self.blocks_left,
        }


def block_influence(
    model: nn.Module, tokens: torch.Tensor, *, batch_size: int | None = None, device: torch.device | None = None
) -> list[float]:
    """Each decoder block's influence ``1 - mean cos(x_in, x_out)`` over the calibration tokens (dense pass).

    Example::

        block_influence(model, tokens)  # [0.41, 0.08, 0.05, 0.12]
    """
    stack = find_decoder_stack(model)
    batch_size = batch_size or default_batch_size(model, stack, tokens.shape[0], tokens.shape[1])
    batches = capture_block_inputs(model, stack, tokens, batch_size)
    influence = []
    with torch.no_grad():
        for block in stack.blocks:
            total, count = 0.0, 0
            with on_device(block, device):
                for batch in batches:
                    work = batch.to(device) if device is not None else batch
                    out = call_block(block, work)
                    cos = torch.nn.functional.cosine_similarity(work.hidden.float(), out.float(), dim=-1)
                    total += float(cos.sum())
                    count += cos.numel()
                    batch.hidden = out.to(batch.hidden.device)
            influence.append(1.0 - total / count)
    return influence


def remove_blocks(model: nn.Module, indices: Sequence[int]) -> None:
    """Delete decoder blocks ``indices`` in place and fix the config and layer indices to match.

    Example::

        remove_blocks(model, [2, 3]); model.config.num_hidden_layers  # 2 fewer
    """
    stack = find_decoder_stack(model)
    count = len(stack.blocks)
    drop = sorted(set(int(i) for i in indices))
    if any(not 0 <= i < count for i in drop):
        raise ConfigError(f"block indices must be in [0, {count}), got {drop}")
    if len(drop) >= count:
        raise ConfigError(f"cannot remove all {count} decoder blocks; keep at least one")
    keep = [i for i in range(count) if i not in drop]
    kept = [stack.blocks[i] for i in keep]
    while len(stack.blocks):
        del stack.blocks[len(stack.blocks) - 1]
    for block in kept:
        stack.blocks.append(block)
    for new_index, block in enumerate(kept):
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_index
    config = getattr(model, "config", None)
    if config is not None:
        for key, value in list(vars(config).items()):
            if isinstance(value, list) and len(value) == count and key != "architectures":
                setattr(config, key, [value[i] for i in keep])
        config.num_hidden_layers = len(keep)


def prune_depth(
    model: nn.Module,
    calibration: CalibrationSource | None = None,
    *,
    tokenizer: Any = None,
    remove: float | int = 0.25,
    criterion: str = "influence",
    n_samples: int = 32,
    seq_len: int = 512,
    seed: int = 0,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
) -> DepthResult:
    """Remove ``remove`` decoder blocks (a fraction < 1 of them, or a count >= 1) by ``criterion``.

    ``criterion="influence"`` removes the least influential blocks (needs calibration data);
    ``"last"`` removes the last blocks (the baseline).

    Example::

        prune_depth(model, "train.txt", tokenizer=tok, remove=0.25).removed  # [5, 6]
    """
    if criterion not in CRITERIA:
        raise ConfigError(f"depth criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    stack = find_decoder_stack(model)
    count = len(stack.blocks)
    if isinstance(remove, float) and not 0.0 < remove < 1.0:
        raise ConfigError(f"remove must be a fraction in (0, 1) or a block count, got {remove}")
    number = int(round(remove * count)) if isinstance(remove, float) else int(remove)
    if not 1 <= number < count:
        raise ConfigError(f"removing {remove} of {count} blocks leaves {count - number}; remove between 1 and {count - 1}")
    work_device = resolve_device(device)
    influence: list[float] = []
    if criterion == "influence":
        if calibration is None:
            raise ConfigError("block influence needs calibration data: a text file, a list of strings or token ids")
        tokens = prepare_tokens(model, calibration, tokenizer, n_samples, seq_len, seed)
        influence = block_influence(model, tokens, batch_size=batch_size, device=work_device)
        drop = sorted(sorted(range(count), key=lambda i: influence[i])[:number])
    else:
        drop = list(range(count - number, count))
    remove_blocks(model, drop)
    return DepthResult(removed=drop, influence=influence, criterion=criterion, blocks_left=count - number)
