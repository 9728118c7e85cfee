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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.torch.llm.calibration import CalibrationSource
from prunekit.torch.llm.capture import call_block, call_model, capture_block_inputs, model_device, on_device
from prunekit.torch.llm.discovery import find_decoder_stack, require_whole_blocks
from prunekit.torch.llm.evaluate import perplexity
from prunekit.torch.llm.memory import default_batch_size, resolve_device
from prunekit.torch.llm.sequential import prepare_tokens
from prunekit.torch.llm.width_config import nested_configs

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
    require_whole_blocks(model, stack, "block influence")
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
    require_whole_blocks(model, stack, "skipping a block")
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

    The config must then build the shallower model (checked on the ``meta`` device, so
    ``from_pretrained`` reloads it); when it cannot, the model is left as it was and a
    :class:`~prunekit.errors.ConfigError` names the model and the first parameter that differs.

    Example::

        remove_blocks(model, [2, 3]); model.config.num_hidden_layers  # 2 fewer
    """
    _remove_blocks(model, indices)


def _remove_blocks(model: nn.Module, indices: Sequence[int]) -> Callable[[], None]:
    """:func:`remove_blocks`, returning a function that puts the blocks, indices and config back."""
    stack = find_decoder_stack(model)
    count = len(stack.blocks)
    drop = sorted(set(int(i) for i in indices))
    if any(not 0 <= i < count for i in drop):
        raise ConfigError(f"block indices must be in [0, {count}), got {drop}")
    if len(drop) >= count:
        raise ConfigError(f"cannot remove all {count} decoder blocks; keep at least one")
    keep = [i for i in range(count) if i not in drop]
    blocks = list(stack.blocks)
    config = getattr(model, "config", None)
    parts = nested_configs(config) if config is not None else []
    saved_configs = [dict(vars(part)) for part in parts]
    renumbered: list[tuple[nn.Module, str, int]] = []

    def restore_configs() -> None:
        for part, saved in zip(parts, saved_configs, strict=True):
            vars(part).clear()
            vars(part).update(saved)

    def undo() -> None:
        while len(stack.blocks):
            del stack.blocks[len(stack.blocks) - 1]
        for block in blocks:
            stack.blocks.append(block)
        for module, key, value in renumbered:
            setattr(module, key, value)
        restore_configs()

    while len(stack.blocks):
        del stack.blocks[len(stack.blocks) - 1]
    for i in keep:
        stack.blocks.append(blocks[i])
    for new_index, old_index in enumerate(keep):
        for module in blocks[old_index].modules():
            for key, value in list(vars(module).items()):
                if _LAYER_INDEX.match(key) and type(value) is int and value == old_index:
                    renumbered.append((module, key, value))
                    setattr(module, key, new_index)
    # every config part that counts the blocks, then each alone (a vision tower's config may count as many)
    for attempt in [parts] + ([[part] for part in parts] if len(parts) > 1 else []):
        restore_configs()
        for part in attempt:
            _shrink_config(part, count, keep)
        try:
            _check_reload(model, parts, count, len(keep))
        except ConfigError as exc:
            error = exc
            continue
        return undo
    undo()
    raise ConfigError(f"removing blocks {drop} of {type(model).__name__}: {error}") from error


_LAYER_INDEX = re.compile(r"^layer_?(idx|id|index)$")  # the attribute a block's attention reads its cache slot from
_LAYER_COUNTS = ("num_hidden_layers", "num_layers", "n_layer", "n_layers", "num_decoder_layers", "decoder_layers")


def _shrink_config(config: Any, count: int, keep: list[int]) -> None:
    """Make a config that describes ``count`` blocks describe blocks ``keep`` (counts and per-layer lists)."""
    counts = [key for key in _LAYER_COUNTS if _get(config, key) == count]
    if not counts:
        return
    for key, value in list(vars(config).items()):
        if isinstance(value, list) and len(value) == count and key != "architectures":
            setattr(config, key, [value[i] for i in keep])
    for key in counts:
        try:
            setattr(config, key, len(keep))
        except (NotImplementedError, AttributeError):  # an alias the config refuses (ProphetNet's num_hidden_layers)
            continue


def _get(config: Any, key: str) -> Any:
    try:
        return getattr(config, key, None)
    except Exception:  # noqa: BLE001 - per-layer configs refuse a global read of some fields
        return None


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]] | None:
    try:
        with torch.device("meta"):
            fresh = type(model)(model.config)
    except Exception:  # noqa: BLE001 - a class that cannot build on meta: nothing to compare
        return None
    return {k: tuple(v.shape) for k, v in fresh.state_dict().items()}


def _check_reload(model: nn.Module, parts: list[Any], count: int, left: int) -> None:
    """The config must build the model's parameters as they now are; else try each other layer-count field
    still saying ``count``, and raise :class:`ConfigError` when none makes it so."""
    if getattr(model, "config", None) is None:
        return
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = _shapes(model)
    if got is None or got == want:
        return
    for part in parts:
        for key, value in list(vars(part).items()):
            if "layer" in key and type(value) is int and value == count:
                setattr(part, key, left)
                if _shapes(model) == want:
                    return
                setattr(part, key, value)
    missing = sorted(set(got) ^ set(want)) or [k for k in want if got.get(k) != want[k]]
    raise ConfigError(
        f"its config cannot describe the shallower model (rebuilt from it, {missing[0]!r} differs), so it would not "
        "reload with from_pretrained; remove other blocks, or prune it unstructured instead"
    )


def _runs_with_cache(model: nn.Module, ids: torch.Tensor) -> bool:
    """Whether ``model`` runs ``ids`` with a KV cache, as ``generate()`` does (``False`` for a forward without one)."""
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=True)
    except Exception:  # noqa: BLE001 - any failure means "no cached forward to keep working"
        return False
    return True


def _remove_in_order(model: nn.Module, order: list[int], number: int, ids: torch.Tensor | None) -> list[int]:
    """Remove ``number`` blocks, the first of ``order`` (original indices) whose removal the config can describe
    and the model runs without (a dense block before MoE ones may be needed where it is); sorted indices removed.

    The best-scored blocks go together when they can; otherwise one at a time down the order."""
    cached = ids is not None and _runs_with_cache(model, ids)
    first = sorted(order[:number])
    try:
        undo = _remove_blocks(model, first)
        if ids is not None:
            _check_runs(model, ids, cached, first, undo)
        return first
    except ConfigError as exc:
        reason = exc
    alive, removed, undos = list(range(len(order))), [], []
    for block in order:
        try:
            undo = _remove_blocks(model, [alive.index(block)])
            if ids is not None:
                _check_runs(model, ids, cached, [block], undo)
        except ConfigError:
            continue
        alive.remove(block)
        removed.append(block)
        undos.append(undo)
        if len(removed) == number:
            return sorted(removed)
    for undo in reversed(undos):
        undo()
    raise ConfigError(f"no {number} blocks of {type(model).__name__} can go: {reason}")


def _check_runs(model: nn.Module, ids: torch.Tensor, cached: bool, drop: list[int], undo: Callable[[], None]) -> None:
    """The shallower model must run ``ids`` (and with a KV cache when the whole model did); else put the blocks
    back and say so."""
    try:
        with torch.no_grad():
            call_model(model, ids)
            if cached:
                model(input_ids=ids, use_cache=True)
    except Exception as exc:
        undo()
        raise ConfigError(
            f"{type(model).__name__} no longer runs without blocks {drop} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:160]}), so they were kept; remove other blocks (criterion='last' or a "
            "count) or prune it unstructured instead"
        ) from exc


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
    require_whole_blocks(model, stack, "depth pruning")
    count = len(stack.blocks)
    if isinstance(remove, float) and not 0.0 < remove < 1.0:
        raise ConfigError(f"remove must be a fraction in (0, 1) or a block count, got {remove}")
    number = int(round(remove * count)) if isinstance(remove, float) else int(remove)
    if not 1 <= number < count:
        raise ConfigError(f"removing {remove} of {count} blocks leaves {count - number}; remove between 1 and {count - 1}")
    work_device = resolve_device(device)
    influence: list[float] = []
    skipped: list[float] = []
    if calibration is None and criterion != "last":
        raise ConfigError(f"depth criterion {criterion!r} needs calibration data: a text file, a list of strings or token ids")
    tokens = None if calibration is None else prepare_tokens(model, calibration, tokenizer, n_samples, seq_len, seed)
    if criterion != "last":
        assert tokens is not None
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
        order = sorted(range(count), key=lambda i: scores[i])
    if criterion == "last":
        order = list(range(count - 1, -1, -1))
    ids = None if tokens is None else tokens[:1].to(model_device(model))
    drop = _remove_in_order(model, order, number, ids)
    return DepthResult(
        removed=drop, influence=influence, criterion=criterion, blocks_left=count - number, skip_perplexity=skipped
    )
