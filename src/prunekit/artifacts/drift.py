"""Drift scores between binned reference counts and binned recent counts: PSI and the KS statistic.

Both work on histograms over the *same* bins (a profile's decile edges), so a server can keep
fixed-size counters instead of raw samples and score a window in O(features x bins):

- **Population stability index** ``PSI = sum((w - r) * ln(w / r))`` over bin shares ``r``
  (reference) and ``w`` (window), each bin given half a count first so an empty bin stays finite.
  The usual reading: below 0.1 no shift, 0.1-0.25 moderate, above 0.25 a major shift.
- **Kolmogorov-Smirnov statistic** ``max |R(x) - W(x)|`` of the two cumulative distributions,
  evaluated at the bin edges: a lower bound of the exact two-sample statistic, exact when the values
  only take the edge values. It is in [0, 1]; its p-value is not used, because with thousands of
  rows every trivial shift becomes "significant".

Example::

    psi(np.array([[50, 50]]), np.array([[90, 10]]))   # array([0.87...])
    ks(np.array([[50, 50]]), np.array([[90, 10]]))    # array([0.4])
"""

from __future__ import annotations

import numpy as np

SMOOTHING = 0.5  # pseudo-count per bin (Jeffreys prior): keeps empty bins finite without hiding shifts


def _shares(counts: np.ndarray, valid: np.ndarray | None, smoothing: float) -> np.ndarray:
    counts = np.atleast_2d(np.asarray(counts, dtype=np.float64))
    mask = np.ones_like(counts, dtype=bool) if valid is None else np.atleast_2d(valid)
    smoothed = np.where(mask, counts + smoothing, 0.0)
    totals = smoothed.sum(axis=1, keepdims=True)
    return np.divide(smoothed, totals, out=np.zeros_like(smoothed), where=totals > 0)


def psi(reference: np.ndarray, window: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """PSI per row of two ``(features, bins)`` count matrices; ``valid`` masks padding bins out.

    Example::

        psi(np.array([[10, 10]]), np.array([[10, 10]]))   # array([0.])
    """
    r = _shares(reference, valid, SMOOTHING)
    w = _shares(window, valid, SMOOTHING)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(r > 0, (w - r) * np.log(w / r), 0.0)
    return terms.sum(axis=1)


def ks(reference: np.ndarray, window: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """The KS statistic per row of two ``(features, bins)`` count matrices, at the bin edges.

    Example::

        ks(np.array([[1, 0]]), np.array([[0, 1]]))   # array([1.])
    """
    r = _shares(reference, valid, 0.0)
    w = _shares(window, valid, 0.0)
    return np.abs(np.cumsum(r, axis=1) - np.cumsum(w, axis=1)).max(axis=1)


__all__ = ["SMOOTHING", "ks", "psi"]
