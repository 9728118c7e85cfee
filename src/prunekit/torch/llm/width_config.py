"""Whether a causal LM's config can describe it narrower, checked before width pruning touches a weight.

A width-pruned model must reload with ``from_pretrained``: its config has to build exactly the
narrower shapes. Nothing here trusts a field name: the candidate fields are those holding the old
width, and each candidate config is built on the ``meta`` device (no memory) and its first decoder
block compared, parameter by parameter, with the shapes the pruning plans. A per-feature vector
the plan did not cover (a norm over the MLP width, between up and down projections) is sliced
with the plan's kept indices when the rebuilt shape says so; any other difference refuses the
prune with the model, the parameter and what to do.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from prunekit.errors import ConfigError

#: Config fields that name an MLP width; tried together first, before each field holding the width alone.
_WIDTH_WORDS = ("inter", "ffn", "inner", "_ff")


def nested_configs(config: Any) -> list[Any]:
    """``config`` and every config nested in it (a multimodal model's ``text_config``...)."""
    found = [config]
    for value in vars(config).values():
        if hasattr(value, "to_dict") and hasattr(value, "model_type") and value is not config:
            found += nested_configs(value)
    return found


def text_config(config: Any) -> Any:
    """The config that describes the language model (``get_text_config()`` of a composite config)."""
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def _fresh_shapes(model: nn.Module, config: Any) -> dict[str, tuple[int, ...]] | None:
    try:
        with torch.device("meta"):
            fresh = type(model)(config)
        return _shapes(fresh)
    except Exception:  # noqa: BLE001 - a config the class refuses describes nothing
        return None


def _relative(name: str, prefixes: list[str]) -> str | None:
    """``name`` relative to the decoder block it lies in, or ``None`` outside the stack."""
    return next((name[len(p) :] for p in prefixes if name.startswith(p)), None)


def width_fields(config: Any, width: int) -> list[list[tuple[Any, str]]]:
    """Candidate ``[(config part, field)]`` sets recording an MLP width of ``width``: the width-named fields
    holding it together, then each field holding it alone (GPT-2's unset ``n_inner`` last)."""
    holding = [
        (part, key)
        for part in nested_configs(config)
        for key, value in part.to_dict().items()
        if type(value) is int and value == width and hasattr(part, key)
    ]
    named = [(part, key) for part, key in holding if any(word in key for word in _WIDTH_WORDS)]
    tries = ([named] if named else []) + [[one] for one in holding]
    tries += [[(part, "n_inner")] for part in nested_configs(config) if getattr(part, "n_inner", 0) is None]
    return tries


def narrower_config(
    model: nn.Module,
    planned: Mapping[str, tuple[int, ...]],
    mlp: tuple[int, int] | None,
    heads: Mapping[str, int],
    vectors: Mapping[tuple[int, int], str],
    blocks: list[str],
) -> tuple[list[tuple[int, str, Any]], dict[str, str]]:
    """The config changes that build every block with the ``planned`` shapes (block-relative parameter names, as
    block 0 will be) and the rest of the model as it is, and the extra vectors to slice.

    ``mlp`` is ``(before, after)`` of the MLP width (``None`` when unchanged), ``heads`` the head
    fields to set (``num_attention_heads``...), ``vectors`` maps a 1-D ``(before, after)`` size
    change to the kept-index set that slices it (``"mlp"``, ``"q"``, ``"kv"``). Returns the changes
    as ``[(index into nested_configs(model.config), field, value)]`` and ``{parameter of block 0:
    index set}`` for the extra vectors. ``blocks`` names the blocks that will be pruned (those laid out as
    block 0); every other parameter must rebuild as it is. Raises
    :class:`~prunekit.errors.ConfigError` when no candidate config builds the planned shapes.
    """
    current = _shapes(model)
    name = type(model).__name__
    prefixes = [f"{block}." for block in blocks]
    tries = width_fields(model.config, mlp[0]) if mlp else [[]]
    if not tries:
        raise ConfigError(
            f"{name}'s config holds no field equal to its MLP width {mlp[0] if mlp else ''}, so a narrower MLP "
            "would not reload; prune attention heads only (mlp=0), or use depth or unstructured pruning"
        )
    problems = []
    originals = nested_configs(model.config)
    position = {id(part): index for index, part in enumerate(originals)}
    for fields in tries:
        changes = [(position[id(part)], key, mlp[1] if mlp else None) for part, key in fields]
        changes += [(position[id(text_config(model.config))], key, value) for key, value in heads.items()]
        config = copy.deepcopy(model.config)
        apply_changes(config, changes)
        fresh = _fresh_shapes(model, config)
        if fresh is None:
            problems.append(f"setting {[k for _, k in fields]} makes a config {name} refuses")
            continue
        extra, wrong = {}, []
        for param, shape in current.items():
            relative = _relative(param, prefixes)
            want = planned.get(relative, shape) if relative is not None else shape
            got = fresh.get(param)
            if got == want:
                continue
            if relative is not None and got is not None and len(shape) == 1 and (shape[0], got[0]) in vectors:
                extra[relative] = vectors[(shape[0], got[0])]
            else:
                wrong.append(f"{param} rebuilds as {got}, pruning plans {want}")
        if not wrong:
            return changes, extra
        problems.append(f"with {[k for _, k in fields] or 'the head fields'}: {wrong[0]}")
    raise ConfigError(
        f"{name}'s config cannot describe the width-pruned model, so it would not reload ({'; '.join(problems[:2])}); "
        "prune the other part only (mlp=0 or heads=0), or use depth or unstructured pruning"
    )


def apply_changes(config: Any, changes: list[tuple[int, str, Any]]) -> None:
    """Set the fields :func:`narrower_config` chose on ``config`` (or a copy of the config it was given)."""
    parts = nested_configs(config)
    for index, key, value in changes:
        setattr(parts[index], key, value)


def slice_vector(block: nn.Module, param: str, keep: torch.Tensor) -> None:
    """Keep entries ``keep`` of block parameter ``param`` (a per-feature norm weight or bias), in place."""
    owner_name, _, attr = param.rpartition(".")
    owner = block.get_submodule(owner_name) if owner_name else block
    old = getattr(owner, attr)
    setattr(owner, attr, nn.Parameter(old.data[keep.to(old.device)].clone(), requires_grad=old.requires_grad))
    if isinstance(getattr(owner, "normalized_shape", None), tuple):
        owner.normalized_shape = (int(keep.numel()),)
