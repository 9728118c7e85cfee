"""Depth pruning: remove whole decoder blocks, ranked by block influence (ShortGPT), by the calibration
perplexity without each block (Shortened LLaMA), or simply the last ones.

A block's influence is ``1 - cos(x_in, x_out)`` of the hidden states entering and leaving it,
averaged over the calibration tokens: a block that barely turns the residual stream matters
least. It costs one pass, but it judges each block by its own output; on small models it can
miss a block whose small turn the later blocks amplify. The perplexity criterion runs the whole
model once per block with that block skipped and removes the blocks whose absence raises the
calibration perplexity least: one forward pass per block, judged on what the user cares about.
Removal edits the model in place: the ``ModuleList`` loses the blocks, the config's
``num_hidden_layers`` (and any per-layer list in the config, such as ``layer_types``) shrinks,
and every ``layer_idx`` attribute is renumbered, so ``generate()`` with a KV cache works and
``save_pretrained`` output reloads with ``from_pretrained``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.torch.llm.calibration import CalibrationSource
from prunekit.torch.llm.capture import call_block, capture_block_inputs, model_device, on_device
from prunekit.torch.llm.discovery import find_decoder_stack
from prunekit.torch.llm.evaluate import perplexity
from prunekit.torch.llm.memory import default_batch_size, resolve_device
from prunekit.torch.llm.sequential import prepare_tokens

CRITERIA = ("influence", "perplexity", "last")


@dataclass
class DepthResult:
    """Which blocks were removed (original indices), the blocks left, and each block's score under the
    criterion: ``influence`` (``"influence"``) or the calibration perplexity without it (``"perplexity"``)."""

    removed: list[int]
    influence: list[float]
    criterion: str
    blocks_left: int
    skip_perplexity: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "removed": self.removed,
            "influence": self.influence,
            "skip_perplexity": self.skip_perplexity,
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
        for index, block in enumerate(stack.blocks):
            total, count = 0.0, 0
            with on_device(block, device):
                for batch in batches:
                    work = batch.to(device) if device is not None else batch
                    out = call_block(block, work, index)
                    cos = torch.nn.functional.cosine_similarity(work.hidden.float(), out.float(), dim=-1)
                    total += float(cos.sum())
                    count += cos.numel()
                    batch.hidden = out.to(batch.hidden.device)
            influence.append(1.0 - total / count)
    return influence


def skip_perplexity(model: nn.Module, tokens: torch.Tensor, *, batch_size: int | None = None) -> list[float]:
    """The perplexity of ``model`` on the calibration ``tokens`` (n_samples, seq_len) with each decoder
    block skipped in turn (its output replaced by its input), one full forward pass per block.

    Example::

        skip_perplexity(model, tokens)  # [412.0, 9.1, 9.6, 9.2]: block 1 matters least
    """
    stack = find_decoder_stack(model)
    stream = tokens.reshape(-1)
    scores = []
    for block in stack.blocks:
        handle = block.register_forward_hook(_pass_input_through, with_kwargs=True)
        try:
            scores.append(perplexity(model, stream, context=tokens.shape[1], batch_size=batch_size or 8).perplexity)
        finally:
            handle.remove()
    return scores


def _pass_input_through(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
    """A forward hook that makes a decoder block the identity: its input hidden states replace its output."""
    hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
    return (hidden, *output[1:]) if isinstance(output, (tuple, list)) else hidden


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
    for old_index, (new_index, block) in zip(keep, enumerate(kept), strict=True):
        for module in block.modules():
            for key, value in list(vars(module).items()):
                if _LAYER_INDEX.match(key) and type(value) is int and value == old_index:
                    setattr(module, key, new_index)
    config = getattr(model, "config", None)
    if config is not None:
        for part in _configs(config):
            _shrink_config(part, count, keep)


_LAYER_INDEX = re.compile(r"^layer_?(idx|id|index)$")  # the attribute a block's attention reads its cache slot from
_LAYER_COUNTS = ("num_hidden_layers", "num_layers", "n_layer", "n_layers")


def _configs(config: Any) -> list[Any]:
    """``config`` and every config nested in it (a multimodal model's ``text_config``...)."""
    found = [config]
    for value in vars(config).values():
        if hasattr(value, "to_dict") and hasattr(value, "model_type") and value is not config:
            found += _configs(value)
    return found


def _shrink_config(config: Any, count: int, keep: list[int]) -> None:
    """Make a config that describes ``count`` blocks describe blocks ``keep`` (counts and per-layer lists)."""
    counts = [key for key in _LAYER_COUNTS if getattr(config, key, None) == count]
    if not counts:
        return
    for key, value in list(vars(config).items()):
        if isinstance(value, list) and len(value) == count and key != "architectures":
            setattr(config, key, [value[i] for i in keep])
    for key in counts:
        setattr(config, key, len(keep))


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

    ``criterion="influence"`` removes the least influential blocks (needs calibration data, one
    pass); ``"perplexity"`` the blocks whose absence raises the calibration perplexity least (one
    full forward pass per block, on the model's own device: ``device`` must be where the model
    is or ``None``); ``"last"`` removes the last blocks (the baseline).

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
    skipped: list[float] = []
    if criterion == "last":
        drop = list(range(count - number, count))
    else:
        if calibration is None:
            raise ConfigError(
                f"depth criterion {criterion!r} needs calibration data: a text file, a list of strings or token ids"
            )
        tokens = prepare_tokens(model, calibration, tokenizer, n_samples, seq_len, seed)
        if criterion == "influence":
            influence = block_influence(model, tokens, batch_size=batch_size, device=work_device)
            scores = influence
        else:
            home = model_device(model)
            if work_device is not None and work_device != home:
                raise ConfigError(
                    f"depth criterion 'perplexity' runs the whole model where it is ({home}); move the model to "
                    f"{work_device} first or leave device unset"
                )
            skipped = skip_perplexity(model, tokens, batch_size=batch_size)
            scores = skipped
        drop = sorted(sorted(range(count), key=lambda i: scores[i])[:number])
    remove_blocks(model, drop)
    return DepthResult(
        removed=drop, influence=influence, criterion=criterion, blocks_left=count - number, skip_perplexity=skipped
    )
