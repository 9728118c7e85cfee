"""Mask selection on numpy arrays: top-k, global threshold, N:M and blocks.

A mask is a boolean array of the scored tensor's shape, ``True`` where the weight is kept.
Selection is exact and deterministic: a tensor at sparsity ``s`` gets exactly
``round(s * numel)`` zeros, ties broken by flat index (the earlier element is pruned first),
and it is monotone: entries pruned in ``previous`` stay pruned unless ``regrow=True``.
Framework-free, shared by the PyTorch and Keras backends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from prunekit.errors import ConfigError

NORMALIZATIONS = (None, "mean", "max", "l2")


def _check_sparsity(sparsity: float) -> float:
    if not 0.0 <= float(sparsity) < 1.0:
        raise ConfigError(f"sparsity should be in [0, 1), got {sparsity}")
    return float(sparsity)


def _as_scores(scores: np.ndarray, name: str = "scores") -> np.ndarray:
    array = np.asarray(scores, dtype=np.float64)
    if np.isnan(array).any():
        raise ConfigError(f"{name} contains NaN; importance scores must be real numbers")
    return array


def _check_previous(previous: np.ndarray | None, shape: tuple[int, ...], name: str) -> np.ndarray | None:
    if previous is None:
        return None
    previous = np.asarray(previous, dtype=bool)
    if previous.shape != shape:
        raise ConfigError(f"previous mask for {name} has shape {previous.shape}, expected {shape}")
    return previous


def _lowest(flat_scores: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` lowest scores; ties go to the lower index.

    The same set as a stable argsort's first ``count``, in O(n): everything strictly below
    the count-th smallest value, then the lowest-indexed entries equal to it.
    """
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    if count >= flat_scores.size:
        return np.arange(flat_scores.size)
    kth = np.partition(flat_scores, count - 1)[count - 1]
    below = np.flatnonzero(flat_scores < kth)
    ties = np.flatnonzero(flat_scores == kth)[: count - below.size]
    return np.concatenate([below, ties])


def topk_mask(
    scores: np.ndarray,
    sparsity: float,
    previous: np.ndarray | None = None,
    regrow: bool = False,
) -> np.ndarray:
    """Keep the largest scores, pruning exactly ``round(sparsity * numel)`` entries.

    With ``previous`` (and ``regrow=False``), already-pruned entries are pruned first and
    never revived, so the count is ``max(round(sparsity * numel), already pruned)``.

    Example::

        topk_mask(np.array([3.0, -1.0, 2.0, 0.5]), 0.5)  # [True, False, True, False] for |w| scores
    """
    sparsity = _check_sparsity(sparsity)
    array = _as_scores(scores)
    previous = _check_previous(previous, array.shape, "scores")
    flat = array.reshape(-1).copy()
    count = round(sparsity * flat.size)
    if previous is not None and not regrow:
        # Already-pruned entries stay pruned; the rest are chosen among the survivors only. (Same
        # result as scoring pruned entries -inf, but np.partition slows down ~20x on the many
        # equal -inf values of a sparse tensor.)
        mask = previous.reshape(-1).copy()
        alive = np.flatnonzero(mask)
        extra = count - (flat.size - alive.size)
        if extra > 0:
            mask[alive[_lowest(flat[alive], extra)]] = False
        return mask.reshape(array.shape)
    mask = np.ones(flat.size, dtype=bool)
    mask[_lowest(flat, count)] = False
    return mask.reshape(array.shape)


def _normalized(scores: np.ndarray, normalize: str | None) -> np.ndarray:
    if normalize is None:
        return scores
    if normalize == "mean":
        scale = np.abs(scores).mean()
    elif normalize == "max":
        scale = np.abs(scores).max()
    else:  # "l2"
        scale = np.sqrt((scores**2).sum())
    return scores / scale if scale > 0 else scores


def global_masks(
    scores: Mapping[str, np.ndarray],
    sparsity: float,
    previous: Mapping[str, np.ndarray] | None = None,
    normalize: str | None = None,
    regrow: bool = False,
) -> dict[str, np.ndarray]:
    """One threshold across all tensors: exactly ``round(sparsity * total)`` entries pruned in all.

    ``normalize`` divides each tensor's scores by its mean, max or L2 norm first, so that
    layers with small weights are not emptied (``None`` compares raw scores).

    Example::

        masks = global_masks({"a": np.ones(4), "b": np.full(4, 2.0)}, 0.5)  # prunes all of "a"
    """
    sparsity = _check_sparsity(sparsity)
    if normalize not in NORMALIZATIONS:
        raise ConfigError(f"normalize should be one of {NORMALIZATIONS}, got {normalize!r}")
    if not scores:
        raise ConfigError("global_masks needs at least one tensor of scores")
    names = list(scores)
    arrays = [_as_scores(scores[name], f"scores of {name!r}") for name in names]
    flats = [_normalized(array, normalize).reshape(-1).copy() for array in arrays]
    total = sum(flat.size for flat in flats)
    count = round(sparsity * total)
    if previous is not None and not regrow:
        pruned_before = 0
        for name, array, flat in zip(names, arrays, flats):
            prev = _check_previous(previous.get(name), array.shape, repr(name))
            if prev is not None:
                flat[~prev.reshape(-1)] = -np.inf
                pruned_before += int((~prev).sum())
        count = max(count, pruned_before)
    joined = np.concatenate(flats)
    keep = np.ones(total, dtype=bool)
    keep[_lowest(joined, count)] = False
    masks, offset = {}, 0
    for name, array in zip(names, arrays):
        masks[name] = keep[offset : offset + array.size].reshape(array.shape)
        offset += array.size
    return masks


def nm_mask(
    scores: np.ndarray,
    n: int = 2,
    m: int = 4,
    axis: int = 1,
    previous: np.ndarray | None = None,
) -> np.ndarray:
    """N:M sparsity: in every ``m`` consecutive entries along ``axis``, keep the ``n`` largest.

    ``axis=1`` is the input dimension of a PyTorch Linear/Conv weight (2:4 is what sparse
    tensor cores accelerate). The size along ``axis`` must be a multiple of ``m``.

    Example::

        nm_mask(np.array([[4.0, 1.0, 3.0, 2.0]]), 2, 4)  # [[True, False, True, False]]
    """
    if not (isinstance(n, int) and isinstance(m, int) and 0 < n < m):
        raise ConfigError(f"N:M sparsity needs integers 0 < n < m, got n={n!r}, m={m!r}")
    array = _as_scores(scores)
    if array.ndim == 0 or not -array.ndim <= axis < array.ndim:
        raise ConfigError(f"axis {axis} does not exist in scores of shape {array.shape}")
    if array.shape[axis] % m:
        raise ConfigError(
            f"N:M sparsity groups {m} entries along axis {axis}, but that axis has size "
            f"{array.shape[axis]} (shape {array.shape}); it must be a multiple of {m}"
        )
    previous = _check_previous(previous, array.shape, "scores")
    moved = np.moveaxis(array, axis, -1).copy()
    if previous is not None:
        moved[~np.moveaxis(previous, axis, -1)] = -np.inf
    groups = moved.reshape(-1, m)
    order = np.argsort(groups, axis=1, kind="stable")
    keep = np.ones(groups.shape, dtype=bool)
    np.put_along_axis(keep, order[:, : m - n], False, axis=1)
    return np.moveaxis(keep.reshape(moved.shape), -1, axis)


def _check_block_shape(block_shape: Sequence[int]) -> tuple[int, int]:
    if len(block_shape) != 2 or not all(isinstance(b, int) and b >= 1 for b in block_shape):
        raise ConfigError(f"block_shape should be two integers >= 1, got {block_shape!r}")
    return int(block_shape[0]), int(block_shape[1])


def _tiles(array: np.ndarray, block_shape: tuple[int, int], name: str) -> np.ndarray:
    """The 2-D view ``(shape[0], -1)`` cut into ``(block_rows, rows, block_cols, cols)`` tiles."""
    if array.ndim == 0:
        raise ConfigError(f"block sparsity needs {name} with at least one dimension")
    matrix = array.reshape(array.shape[0], -1)
    rows, cols = block_shape
    if matrix.shape[0] % rows or matrix.shape[1] % cols:
        raise ConfigError(
            f"block {block_shape} does not tile the 2-D view {matrix.shape} of {name} (shape {array.shape}); "
            "choose a block whose sides divide it"
        )
    return matrix.reshape(matrix.shape[0] // rows, rows, matrix.shape[1] // cols, cols)


def block_scores(scores: np.ndarray, block_shape: Sequence[int], norm: str = "l1", name: str = "scores") -> np.ndarray:
    """One score per block of the 2-D view ``(shape[0], -1)``: mean |score| (``"l1"``) or L2 norm.

    Example::

        block_scores(np.ones((4, 8)), (2, 4)).shape  # (2, 2)
    """
    if norm not in ("l1", "l2"):
        raise ConfigError(f"block norm should be 'l1' or 'l2', got {norm!r}")
    tiles = _tiles(_as_scores(scores, name), _check_block_shape(block_shape), name)
    if norm == "l1":
        return np.abs(tiles).mean(axis=(1, 3))
    return np.sqrt((tiles**2).sum(axis=(1, 3)))


def block_keep_of(mask: np.ndarray, block_shape: Sequence[int]) -> np.ndarray:
    """Blocks of ``mask`` that keep at least one entry (the block-level view of an element mask)."""
    return np.asarray(_tiles(np.asarray(mask, dtype=bool), _check_block_shape(block_shape), "mask").any(axis=(1, 3)))


def expand_blocks(block_keep: np.ndarray, block_shape: Sequence[int], shape: tuple[int, ...]) -> np.ndarray:
    """Turn a per-block keep mask back into an element mask of ``shape``."""
    rows, cols = _check_block_shape(block_shape)
    tiled = np.broadcast_to(block_keep[:, None, :, None], (block_keep.shape[0], rows, block_keep.shape[1], cols))
    return tiled.reshape(shape).copy()


def block_mask(
    scores: np.ndarray,
    block_shape: Sequence[int],
    sparsity: float,
    previous: np.ndarray | None = None,
    norm: str = "l1",
) -> np.ndarray:
    """Prune whole blocks of the 2-D view ``(shape[0], -1)``, ranked by mean |score| or L2 norm.

    Exactly ``round(sparsity * number_of_blocks)`` blocks are pruned; both dimensions of the
    2-D view must be multiples of the block's.

    Example::

        block_mask(np.arange(16.0).reshape(4, 4), (1, 4), 0.5)  # prunes rows 0 and 1
    """
    array = np.asarray(scores)
    previous = _check_previous(previous, array.shape, "scores")
    per_block = block_scores(array, block_shape, norm)
    block_previous = None if previous is None else block_keep_of(previous, block_shape)
    return expand_blocks(topk_mask(per_block, sparsity, previous=block_previous), block_shape, array.shape)
