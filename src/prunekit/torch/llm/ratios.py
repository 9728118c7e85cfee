"""Per-layer sparsity targets: uniform, a user dict of globs, or OWL's outlier-weighted ratios.

OWL (Yin et al. 2024): a block whose Wanda scores ``|W| * ||X||`` hold more outliers (entries
above ``threshold`` times the block's mean score) keeps more weights. The blocks' outlier
ratios are rescaled linearly to ``[-lambda, +lambda]`` around the target, so the mean sparsity
over blocks equals the target.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase

import torch

from prunekit.errors import ConfigError
from prunekit.torch.llm.selection import check_sparsity


def outlier_ratio(scores: Sequence[torch.Tensor], threshold: float) -> float:
    """The share of entries over all ``scores`` that exceed ``threshold`` times their common mean.

    Example::

        outlier_ratio([torch.tensor([1.0, 1.0, 1.0, 9.0])], 2.0)  # 0.25
    """
    flat = torch.cat([s.reshape(-1).float() for s in scores])
    return float((flat > threshold * flat.mean()).float().mean())


def owl_sparsities(outlier_ratios: Sequence[float], sparsity: float, lam: float = 0.08) -> list[float]:
    """Per-block sparsities from per-block outlier ratios: mean ``sparsity``, spread ``+-lam``, more outliers -> less sparse.

    Example::

        owl_sparsities([0.0, 0.01, 0.02], 0.7, lam=0.08)  # [0.78, 0.7, 0.62]
    """
    sparsity = check_sparsity(sparsity)
    if lam < 0:
        raise ConfigError(f"OWL lambda must be >= 0, got {lam}")
    ratios = torch.tensor(list(outlier_ratios), dtype=torch.float64)
    spread = float(ratios.max() - ratios.min()) if len(ratios) else 0.0
    if spread == 0.0:
        return [sparsity] * len(ratios)
    scaled = (ratios - ratios.min()) / spread * (2 * lam)
    density = scaled - scaled.mean() + (1.0 - sparsity)
    return [float(min(max(1.0 - d, 0.0), 0.999)) for d in density]


def glob_sparsities(names: Sequence[str], ratios: Mapping[str, float], default: float) -> dict[str, float]:
    """Each name's sparsity: that of the first glob in ``ratios`` matching it, else ``default``.

    A glob that matches no name is an error (a typo would silently prune at the default).

    Example::

        glob_sparsities(["model.layers.0.mlp.up_proj"], {"*.mlp.*": 0.6}, 0.5)  # {"model.layers.0.mlp.up_proj": 0.6}
    """
    for glob, value in ratios.items():
        check_sparsity(value, f"ratio for {glob!r}")
        if not any(fnmatchcase(name, glob) for name in names):
            shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
            raise ConfigError(f"layer ratio glob {glob!r} matches no prunable projection; names look like: {shown}")
    result = {}
    for name in names:
        result[name] = next((float(v) for g, v in ratios.items() if fnmatchcase(name, g)), default)
    return result
