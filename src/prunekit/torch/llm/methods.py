"""The one-shot LLM pruning methods: magnitude, Wanda and SparseGPT (handlers of registry kind ``"llm"``).

Calling convention of kind ``"llm"``: a handler is an :class:`LLMMethod` — a callable
``handler(task: LayerTask, **options) -> torch.Tensor`` returning the pruned ``[out, in]`` weight
(float32, zeros where pruned) — with a ``statistics`` attribute naming what the sequential
driver must collect for it: ``"none"``, ``"norms"`` (``||X_j||``) or ``"hessian"`` (``X X^T``).
``options`` are the method record's defaults merged with the user's overrides.

``comparison="auto"`` (any method, unstructured only) prunes the projection with each group,
``"row"`` and ``"layer"``, and keeps the result whose outputs on the calibration tokens are
closer to the dense ones, ``||X W^T - X W_m^T||_F`` (computed from ``X X^T``): which group suits a
layer depends on how its rows' scales differ, which a small model shows more than the 7B models the
per-row default was tuned on (Wanda, Sun et al. 2023, section 5, compares both groups).

Example::

    task = LayerTask(name="fc", weight=w, stats=stats, sparsity=0.5, pattern=(2, 4), comparison="row")
    pruned = get_method(name, kind="llm").handler("torch")(task)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from prunekit.errors import ConfigError
from prunekit.methods.llm_options import COMPARISONS
from prunekit.torch.llm.selection import lowest_k_mask, pruned_count, select_mask
from prunekit.torch.llm.statistics import InputStatistics
from prunekit.torch.llm.threads import one_thread


@dataclass
class LayerTask:
    """One projection to prune: its ``[out, in]`` float32 weight, its input statistics and the target.

    ``pattern`` is ``(n, m)`` for N:M or ``None`` for unstructured ``sparsity``; ``comparison``
    is ``"row"`` (each output row loses the same share), ``"layer"`` (one ranking over the
    matrix), ``"auto"`` (whichever of the two reconstructs the calibration outputs better; needs
    ``stats`` with ``X X^T``) or ``None`` for the method's own default. ``recollect``, given when
    no other projection reads ``stats``, lets a method consume them (SparseGPT factors the Hessian
    in its own memory) and collect them again in the rare case it must start over.
    """

    name: str
    weight: torch.Tensor
    stats: InputStatistics | None
    sparsity: float
    pattern: tuple[int, int] | None = None
    comparison: str | None = None
    recollect: Callable[[], InputStatistics] | None = None


@dataclass(frozen=True)
class LLMMethod:
    """A kind-``"llm"`` handler: ``prune(task, **options)`` and the ``statistics`` it needs (none, norms, hessian)."""

    prune: Callable[..., torch.Tensor]
    statistics: str
    comparison: str

    def __call__(self, task: LayerTask, **options: Any) -> torch.Tensor:
        return self.prune_with_group(task, **options)[0]

    def prune_with_group(self, task: LayerTask, **options: Any) -> tuple[torch.Tensor, str]:
        """The pruned weight and the comparison group it was chosen in (``"auto"`` resolved to ``"row"``/``"layer"``)."""
        if task.comparison != "auto":
            return self.prune(task, **options), task.comparison or self.comparison
        if task.pattern is not None:  # N:M fixes the groups: every run of M inputs in a row
            return self.prune(replace(task, comparison=None), **options), self.comparison
        if task.stats is None or task.stats.xxt is None:
            raise ConfigError(
                f"comparison='auto' needs the calibration inputs' X X^T of layer {task.name!r}; "
                "collect InputStatistics(hessian=True) (prunekit.llm.prune does) or pick 'row' or 'layer'"
            )
        best: tuple[float, torch.Tensor, str] | None = None
        for group in COMPARISONS:
            pruned = self.prune(replace(task, comparison=group), **options)
            error = output_error(task.weight, pruned, task.stats)
            if best is None or error < best[0]:
                best = (error, pruned, group)
        assert best is not None
        return best[1], best[2]


def needed_statistics(method: LLMMethod, comparison: str | None, pattern: tuple[int, int] | None) -> str:
    """What the driver collects for ``method``: its own statistics, or ``X X^T`` when ``"auto"`` compares output errors."""
    return "hessian" if comparison == "auto" and pattern is None else method.statistics


def unreached_method(method: LLMMethod) -> LLMMethod:
    """The stand-in for ``method`` on a projection no calibration token reached (a decoder's cross-attention
    run without encoder states, an expert no token was routed to): magnitude, in ``method``'s comparison group
    (the group reported for it is the one it is pruned in)."""

    def _magnitude_in_group(task: LayerTask, **options: Any) -> torch.Tensor:
        return _magnitude(replace(task, comparison=task.comparison or method.comparison), **options)

    return LLMMethod(prune=_magnitude_in_group, statistics="none", comparison=method.comparison)


def output_error(weight: torch.Tensor, pruned: torch.Tensor, stats: InputStatistics) -> float:
    """``||X W^T - X P^T||_F^2`` over the calibration tokens ``X``: ``trace(D X^T X D^T)`` with ``D = W - P``.

    Example::

        output_error(w, w * keep, stats)  # 0.0 when nothing was pruned
    """
    if stats.xxt is None:
        raise ValueError("output_error needs statistics collected with hessian=True")
    delta = weight.float() - pruned.to(weight.device, torch.float32)
    return float(((delta @ stats.xxt.to(delta.device)) * delta).sum())


def _magnitude(task: LayerTask, **_: Any) -> torch.Tensor:
    weight = task.weight.float()
    keep = select_mask(weight.abs(), task.sparsity, task.pattern, task.comparison or "layer", layer=task.name)
    return weight * keep


def _wanda(task: LayerTask, **_: Any) -> torch.Tensor:
    if task.stats is None:
        raise ConfigError(f"this method needs calibration input norms for layer {task.name!r}")
    weight = task.weight.float()
    scores = weight.abs().mul_(task.stats.input_norms().to(weight.device).unsqueeze(0))
    keep = select_mask(scores, task.sparsity, task.pattern, task.comparison or "row", layer=task.name)
    return weight * keep


def _sparsegpt(task: LayerTask, *, blocksize: int = 128, dampening: float = 0.01, **_: Any) -> torch.Tensor:
    """OBS reconstruction (Frantar & Alistarh 2023), columns in blocks of ``blocksize`` with lazy batch updates."""
    if task.stats is None:
        raise ConfigError(f"this method needs the calibration Hessian of layer {task.name!r}")
    if blocksize < 1 or dampening < 0:
        raise ConfigError(f"OBS reconstruction needs blocksize >= 1 and dampening >= 0, got {blocksize} and {dampening}")
    rows, cols = task.weight.shape
    comparison = task.comparison or "layer"
    if task.pattern is None and task.sparsity == 0.0:
        return task.weight.float().clone()
    if task.pattern is not None and cols % task.pattern[1]:
        select_mask(task.weight[:1].float(), 0.0, task.pattern, comparison, layer=task.name)  # raises the divisibility error
    n_keep, m = task.pattern if task.pattern is not None else (0, 0)
    hinv, dead = _inverse_hessian_factor(task.stats, dampening, task.weight.device, task.name, task.recollect)
    weight = task.weight.float().clone()  # after the inverse: the two working copies are never alive together
    weight[:, dead] = 0.0
    if m and blocksize % m:
        blocksize = max(m, blocksize - blocksize % m)
    for start in range(0, cols, blocksize):
        end = min(start + blocksize, cols)
        w1 = weight[:, start:end].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[start:end, start:end]
        diag1 = torch.diag(hinv1)
        inv_diag1 = 1.0 / diag1
        if not m:
            scores = w1**2 / diag1.unsqueeze(0) ** 2
            # each block prunes its share of the matrix's count, so the blocks add up to exactly that count
            if comparison == "row":
                k = pruned_count(end, task.sparsity) - pruned_count(start, task.sparsity)
                prune = torch.zeros_like(w1, dtype=torch.bool)
                if k:
                    prune.scatter_(1, torch.topk(scores, k, dim=1, largest=False, sorted=False).indices, True)
            elif comparison == "layer":
                prune = ~lowest_k_mask(
                    scores, pruned_count(rows * end, task.sparsity) - pruned_count(rows * start, task.sparsity)
                )
            else:
                raise ConfigError(f"comparison must be 'row' or 'layer', got {comparison!r}")
        else:
            prune = torch.zeros_like(w1, dtype=torch.bool)
        pruned = prune.to(w1.dtype)
        with one_thread():  # the column loop is many tiny ops: thread hand-offs cost more than they save
            _obs_columns(w1, err1, hinv1, diag1, inv_diag1, prune, pruned, m, n_keep)
        weight[:, start:end] = w1.masked_fill_(prune, 0.0)
        weight[:, end:].addmm_(err1, hinv[start:end, end:], alpha=-1.0)
    return weight


def _obs_columns(
    w1: torch.Tensor,
    err1: torch.Tensor,
    hinv1: torch.Tensor,
    diag1: torch.Tensor,
    inv_diag1: torch.Tensor,
    prune: torch.Tensor,
    pruned: torch.Tensor,
    m: int,
    n_keep: int,
) -> None:
    """One block's column-by-column OBS updates in place (``w1`` ends as the kept weights, ``err1`` the scaled errors)."""
    for i in range(w1.shape[1]):
        if m and i % m == 0:
            scores = w1[:, i : i + m] ** 2 / diag1[i : i + m].unsqueeze(0) ** 2
            prune.scatter_(1, i + torch.topk(scores, m - n_keep, dim=1, largest=False).indices, True)
            pruned[:, i : i + m] = prune[:, i : i + m].to(w1.dtype)
        err = w1[:, i] * pruned[:, i] * inv_diag1[i]  # (w - q) / d with q = w where kept, 0 where pruned
        err1[:, i] = err
        w1[:, i:].addr_(err, hinv1[i, i:], alpha=-1.0)  # column i becomes q; later columns compensate


def _inverse_hessian_factor(
    stats: InputStatistics,
    dampening: float,
    device: torch.device,
    name: str,
    recollect: Callable[[], InputStatistics] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U, dead)``: ``U^T U = H^{-1}`` for the dampened Hessian, and the inputs that never fired (``diag H == 0``).

    With ``J`` the reversal permutation and ``K K^T = J H J`` (lower Cholesky), ``U = J K^{-1} J`` is
    upper triangular and ``U^T U = J K^{-T} K^{-1} J = H^{-1}``: one Cholesky and one triangular
    inverse, both in place (:func:`_lapack_in_place`), and the reversals done in place. With
    ``recollect`` the statistics' own sums become the working matrix, so no second ``d x d`` is alive
    (the reference's Cholesky -> inverse -> Cholesky chain holds three or four). A Hessian that is not
    positive definite (or whose pivots drown in rounding) gets more dampening (1e-4, 1e-2, 0.1 of its
    mean diagonal) before giving up; a consumed one is collected again first.
    """
    for attempt, extra in enumerate((0.0, 1e-4, 1e-2, 1e-1)):
        if recollect is None:
            hessian = stats.hessian_matrix().to(device)  # a fresh tensor, overwritten below
        else:
            stats = recollect() if attempt else stats
            hessian = stats.take_hessian().to(device)
        diagonal = hessian.diagonal()
        dead = diagonal == 0
        diagonal[dead] = 1.0
        mean = float(diagonal.mean())
        diagonal.add_(dampening * mean + extra * mean * (1.0 + dampening))
        _reverse_in_place(hessian)
        before = hessian.diagonal().clone()
        if _lapack_in_place(hessian, "cholesky") and _stable_pivots(hessian.diagonal(), before):
            _lapack_in_place(hessian, "inverse")
            _reverse_in_place(hessian)
            return hessian, dead
        del hessian
    raise ConfigError(f"the calibration Hessian of layer {name!r} is not positive definite even after dampening; raise dampening")


def _stable_pivots(pivots: torch.Tensor, diagonal: torch.Tensor) -> bool:
    """Whether a Cholesky factor's pivots are above rounding noise (``L_ii^2 > d * eps * H_ii``): a singular
    matrix can factor "successfully" with noise-sized pivots, whose inverse is garbage."""
    return bool((pivots.square() > len(pivots) * torch.finfo(pivots.dtype).eps * diagonal).all())


def _lapack_in_place(matrix: torch.Tensor, step: str) -> bool:
    """Overwrite a contiguous square ``matrix`` with its lower Cholesky factor (``"cholesky"``, of a symmetric
    matrix; False when it is not positive definite) or, given a lower-triangular one, with its inverse
    (``"inverse"``).

    On the CPU both run through scipy's LAPACK wrappers with ``overwrite``: torch's ``linalg`` calls copy
    a row-major matrix to column-major first, a second ``d x d`` (36 MiB for an MLP down-projection of
    3072 inputs) at the peak of a SparseGPT run. A row-major ``M`` read column-major is ``M^T``: the upper
    factor of the (symmetric) matrix, and ``inv(L^T) = inv(L)^T``, give the row-major lower results.
    """
    if matrix.device.type != "cpu" or matrix.dtype not in (torch.float32, torch.float64):
        if step == "cholesky":
            info = torch.empty((), dtype=torch.int32, device=matrix.device)
            torch.linalg.cholesky_ex(matrix, out=(matrix, info))
            return int(info) == 0
        inverse = torch.linalg.solve_triangular(
            matrix, torch.eye(len(matrix), device=matrix.device, dtype=matrix.dtype), upper=False
        )
        matrix.copy_(inverse)
        return True
    from scipy.linalg import lapack

    array = matrix.numpy()
    single = matrix.dtype == torch.float32
    if step == "cholesky":
        result, info = (lapack.spotrf if single else lapack.dpotrf)(array.T, lower=0, clean=1, overwrite_a=1)
    else:
        result, info = (lapack.strtri if single else lapack.dtrtri)(array.T, lower=0, overwrite_c=1)
    if not np.shares_memory(result, array):
        raise RuntimeError(f"scipy's LAPACK {step} did not work in place")
    return info == 0


def _reverse_in_place(matrix: torch.Tensor, chunk: int = 1 << 16) -> None:
    """Turn a contiguous square ``matrix`` into ``J matrix J`` (rows and columns reversed) with ``chunk``-sized temporaries.

    Reading a row-major ``d x d`` matrix backwards as one flat vector reverses both its rows and columns.
    """
    flat = matrix.view(-1)
    size = flat.numel()
    half = size // 2
    for start in range(0, half, chunk):
        stop = min(start + chunk, half)
        front = flat[start:stop].clone()
        flat[start:stop] = flat[size - stop : size - start].flip(0)
        flat[size - stop : size - start] = front.flip(0)


magnitude = LLMMethod(prune=_magnitude, statistics="none", comparison="layer")
wanda = LLMMethod(prune=_wanda, statistics="norms", comparison="row")
sparsegpt = LLMMethod(prune=_sparsegpt, statistics="hessian", comparison="layer")
