"""How many channels each group loses, and which: uniform per layer, global ranking with a
per-layer cap, per-layer ratios by glob, ``round_to``, and ignore lists."""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass

import numpy as np

from prunekit.errors import ConfigError, LayerNotFoundError
from prunekit.torch.structured.graph import ChannelGroup


@dataclass
class GroupTarget:
    """A group with the ratio asked of it, or the reason it is left whole."""

    group: ChannelGroup
    ratio: float
    skipped: str = ""


def check_globs(module_names: list[str], patterns: list[str], field: str) -> None:
    """Raise ``LayerNotFoundError`` for a pattern that matches no module name."""
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in module_names):
            close = difflib.get_close_matches(pattern, module_names, n=3)
            hint = f"; did you mean {close}?" if close else f"; modules are e.g. {module_names[1:6]}"
            raise LayerNotFoundError(f"{field}: {pattern!r} matches no layer of the model{hint}")


def _matches(names: list[str], patterns: list[str]) -> str | None:
    for pattern in patterns:
        if any(fnmatch.fnmatchcase(name, pattern) for name in names):
            return pattern
    return None


def group_targets(
    groups: list[ChannelGroup], ratio: float, layer_ratios: dict[str, float], ignore_outputs: list[str], ignore_inputs: list[str]
) -> list[GroupTarget]:
    """The requested ratio of every group; ignore lists and single-channel groups skip it.

    A group's ratio is that of the first ``layer_ratios`` pattern matching one of the modules
    producing its channels, else ``ratio``.
    """
    targets = []
    for group in groups:
        target = GroupTarget(group, ratio)
        pattern = _matches(group.producers, list(layer_ratios))
        if pattern is not None:
            target.ratio = float(layer_ratios[pattern])
        hit = _matches(group.producers, ignore_outputs)
        if hit is not None:
            target.skipped = f"ignore_outputs={hit!r}"
        hit = _matches(group.consumers, ignore_inputs)
        if hit is not None and not target.skipped:
            target.skipped = f"ignore_inputs={hit!r}"
        if group.size < 2 and not target.skipped:
            target.skipped = "a single channel"
        targets.append(target)
    return targets


def _keep_count(size: int, prune: int, unit: int, round_to: int | None) -> int:
    prune = min(max(prune, 0), size - 1)
    keep = size - prune
    if not round_to or keep == size:
        return keep
    valid = [k for k in range(1, size + 1) if (k * unit) % round_to == 0 or k == size]
    return min(valid, key=lambda k: (abs(k - keep), -k))


def _validated(scores: object, group: ChannelGroup) -> np.ndarray:
    try:
        array = np.asarray(scores.detach().cpu() if hasattr(scores, "detach") else scores, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"importance for group {group.name!r} returned {type(scores).__name__}, not numbers") from exc
    array = array.reshape(-1)
    if array.shape != (group.size,):
        raise ConfigError(f"importance for group {group.name!r} returned {array.shape[0]} scores; it has {group.size} channels")
    if not np.isfinite(array).all():
        raise ConfigError(f"importance for group {group.name!r} returned NaN or infinite scores")
    return array


def select_channels(
    targets: list[GroupTarget],
    scores: dict[int, object],
    *,
    scope: str,
    ratio: float,
    max_layer_ratio: float,
    round_to: int | None,
    explicit: set[int],
) -> dict[int, np.ndarray]:
    """Channel indices to remove per group id (lowest scores first; ties to the lower index).

    With ``scope="global"`` groups without an explicit ``layer_ratios`` entry compete on scores
    normalised by their group mean; each loses at most ``max_layer_ratio`` of its channels.
    """
    active = [t for t in targets if not t.skipped]
    arrays = {t.group.id: _validated(scores[t.group.id], t.group) for t in active}
    counts: dict[int, int] = {}
    pooled = [t for t in active if scope == "global" and t.group.id not in explicit]
    for t in active:
        if t not in pooled:
            counts[t.group.id] = int(round(t.ratio * t.group.size))
    if pooled:
        entries = []
        for t in pooled:
            s = arrays[t.group.id]
            mean = float(np.mean(np.abs(s)))
            normalised = s / mean if mean > 0 else np.zeros_like(s)
            entries.extend((float(v), t.group.id, i) for i, v in enumerate(normalised))
            counts[t.group.id] = 0
        total = int(round(ratio * sum(t.group.size for t in pooled)))
        caps = {t.group.id: min(t.group.size - 1, int(np.floor(max_layer_ratio * t.group.size))) for t in pooled}
        entries.sort(key=lambda e: (e[0], e[1], e[2]))
        taken = 0
        for _, gid, _ in entries:
            if taken >= total:
                break
            if counts[gid] < caps[gid]:
                counts[gid] += 1
                taken += 1
    selection: dict[int, np.ndarray] = {}
    for t in active:
        group = t.group
        keep = _keep_count(group.size, counts[group.id], group.unit, round_to)
        if keep < group.size:
            order = np.argsort(arrays[group.id], kind="stable")
            selection[group.id] = np.sort(order[: group.size - keep])
    return selection
