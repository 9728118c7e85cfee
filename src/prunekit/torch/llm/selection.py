"""Choosing which weights to zero from a score matrix: unstructured (per row or per layer) and N:M.

Every function keeps the *highest* scores and returns a boolean ``keep`` mask of the score's
shape ``[out_features, in_features]``; counts are exact (ties are broken by position, never by
a threshold that could take too many). Each selection runs ``topk`` on the smaller side, the
entries dropped or the entries kept, so 70 % sparsity ranks 30 % of the scores.
"""

from __future__ import annotations

import re

import torch

from prunekit.errors import ConfigError
from prunekit.methods.llm_options import COMPARISONS


def parse_pattern(pattern: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"2:4"`` -> ``(2, 4)`` (keep 2 of every 4 consecutive inputs); ``None``/``"unstructured"`` -> ``None``.

    Example::

        parse_pattern("2:4")  # (2, 4)
    """
    if pattern is None or pattern == "unstructured":
        return None
    if isinstance(pattern, tuple):
        n, m = pattern
    else:
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(pattern))
        if match is None:
            raise ConfigError(f"pattern must look like N:M (e.g. 2:4 or 4:8) or be 'unstructured', got {pattern!r}")
        n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise ConfigError(f"pattern N:M needs 0 < N < M, got {n}:{m}")
    return (int(n), int(m))


def check_sparsity(sparsity: float, what: str = "sparsity") -> float:
    """``sparsity`` as a float in ``[0, 1)``, else a :class:`~prunekit.errors.ConfigError` naming ``what``."""
    try:
        value = float(sparsity)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number in [0, 1), got {sparsity!r}") from None
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{what} must be in [0, 1), got {value}")
    return value


def lowest_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """A ``keep`` mask of ``scores``' shape that drops exactly the ``k`` lowest entries (over the whole tensor)."""
    return _smaller_side_mask(scores.reshape(1, -1), k).reshape(scores.shape)


def pruned_count(size: int, sparsity: float) -> int:
    """How many of ``size`` weights a ``sparsity`` prunes: ``round(size * sparsity)``, as :mod:`prunekit.masks`
    (the unstructured pruner) counts, so a layer pruned here and there holds the same number of zeros.

    Example::

        pruned_count(10, 0.33)  # 3
    """
    return round(size * sparsity)


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Drop the ``pruned_count(in_features, sparsity)`` lowest scores of every row.

    Example::

        row_mask(torch.tensor([[1.0, 3.0, 2.0, 4.0]]), 0.5)  # [[False, True, False, True]]
    """
    return _smaller_side_mask(scores, pruned_count(scores.shape[1], sparsity))


def _smaller_side_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep all but the ``k`` lowest scores of each row of a 2-D ``scores``, ranking whichever side is smaller."""
    cols = scores.shape[1]
    if k <= 0:
        return torch.ones_like(scores, dtype=torch.bool)
    if 2 * k <= cols:
        keep = torch.ones_like(scores, dtype=torch.bool)
        return keep.scatter_(1, torch.topk(scores, k, dim=1, largest=False, sorted=False).indices, False)
    keep = torch.zeros_like(scores, dtype=torch.bool)
    return keep.scatter_(1, torch.topk(scores, cols - k, dim=1, largest=True, sorted=False).indices, True)


def layer_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Drop the ``pruned_count(numel, sparsity)`` lowest scores of the whole matrix."""
    return lowest_k_mask(scores, pruned_count(scores.numel(), sparsity))


def n_m_mask(scores: torch.Tensor, n: int, m: int, *, layer: str = "layer") -> torch.Tensor:
    """Keep the ``n`` highest scores in every group of ``m`` consecutive inputs of each row.

    Raises :class:`~prunekit.errors.ConfigError` naming ``layer`` when ``m`` does not divide
    its input features.

    Example::

        n_m_mask(torch.tensor([[4.0, 1.0, 3.0, 2.0]]), 2, 4)  # [[True, False, True, False]]
    """
    rows, cols = scores.shape
    if cols % m:
        raise ConfigError(f"pattern {n}:{m} does not divide layer {layer!r}'s {cols} input features; skip it or use another M")
    groups = scores.reshape(rows, cols // m, m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(2, torch.topk(groups, n, dim=2).indices, True)
    return keep.reshape(rows, cols)


def select_mask(
    scores: torch.Tensor,
    sparsity: float,
    pattern: tuple[int, int] | None,
    comparison: str,
    *,
    layer: str = "layer",
) -> torch.Tensor:
    """The ``keep`` mask for ``scores``: N:M when ``pattern`` is given, else per ``comparison`` group (``row``/``layer``)."""
    if pattern is not None:
        return n_m_mask(scores, pattern[0], pattern[1], layer=layer)
    if comparison == "row":
        return row_mask(scores, sparsity)
    if comparison == "layer":
        return layer_mask(scores, sparsity)
    raise ConfigError(f"comparison must be one of {', '.join(COMPARISONS)}, got {comparison!r}")
