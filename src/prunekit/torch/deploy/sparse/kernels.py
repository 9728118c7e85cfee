"""CPU kernels for sparse weights and sparse activations: numba when installed, torch otherwise.

Every kernel computes ``y = x @ W.T`` for a ``(tokens, in)`` float32 input ``x`` and a
``(out, in)`` weight stored in one of four layouts:

- **CSR** (unstructured): ``indptr`` (out + 1), ``indices`` (column of each nonzero), ``values``;
  values float32, or int8 with one float32 scale per output row.
- **BSR** (block sparsity): the same over ``(bh, bw)`` blocks, ``values`` of shape (nblocks, bh, bw).
- **N:M packed**: ``values`` (out, in / M * N) and ``slots`` (uint8, the position of each kept
  value inside its group of M).
- **Column-skipping** (activation sparsity): the weight stored by input column (CSC: ``colptr``,
  ``rows``, ``values``, or a dense transposed weight), so that only the columns of nonzero inputs
  are read; the sparser the input, the less weight memory a decode step touches.

The numba kernels transpose ``x`` once so that the innermost loop runs over tokens (contiguous,
vectorised) and parallelise over output rows; for one token it is a gathered dot product per
row. Without numba the same layouts run through ``torch.sparse`` (CSR) or dense gathers, which
are exact but seldom faster than dense: the converter then keeps layers dense, because it
measures before it chooses.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings
from typing import Any

import numpy as np
import torch

HAVE_NUMBA = importlib.util.find_spec("numba") is not None
#: Below this many tokens the CSR kernel keeps its sums in registers; from it on, in a vectorised array.
SMALL_BATCH = 16
#: Multiply-adds below which a kernel runs on one thread (waking numba's pool costs tens of microseconds).
PARALLEL_MIN_WORK = 1 << 22


def _kernel_sources() -> dict[str, Any]:
    """The kernels as plain Python functions; each splits its output into ``parts`` independent slices
    (``prange``: one per thread when compiled parallel, a plain loop when compiled serial).

    No ``fastmath``: it lets LLVM vectorise the gathered dot product with gather instructions,
    which measured 4-10x slower than scalar loads on the AMD EPYC development machine."""
    from numba import prange

    def csr_vec(indptr, indices, values, scale, x, out, parts):
        rows = indptr.shape[0] - 1
        step = (rows + parts - 1) // parts
        for p in prange(parts):
            for r in range(p * step, min(rows, (p + 1) * step)):
                a0 = np.float32(0.0)
                a1 = np.float32(0.0)
                a2 = np.float32(0.0)
                a3 = np.float32(0.0)
                k = indptr[r]
                hi = indptr[r + 1]
                while k + 4 <= hi:  # four independent sums: the adds overlap instead of waiting on each other
                    a0 += np.float32(values[k]) * x[indices[k]]
                    a1 += np.float32(values[k + 1]) * x[indices[k + 1]]
                    a2 += np.float32(values[k + 2]) * x[indices[k + 2]]
                    a3 += np.float32(values[k + 3]) * x[indices[k + 3]]
                    k += 4
                while k < hi:
                    a0 += np.float32(values[k]) * x[indices[k]]
                    k += 1
                out[r] = ((a0 + a1) + (a2 + a3)) * scale[r]

    def csr_mat(indptr, indices, values, scale, xt, out, parts):
        # xt: (in, tokens) contiguous, so the inner loop runs over tokens; out: (out, tokens)
        rows = indptr.shape[0] - 1
        tokens = xt.shape[1]
        step = (rows + parts - 1) // parts
        for p in prange(parts):
            acc = np.zeros(tokens, dtype=np.float32)
            for r in range(p * step, min(rows, (p + 1) * step)):
                acc[:] = 0.0
                for k in range(indptr[r], indptr[r + 1]):
                    v = np.float32(values[k])
                    c = indices[k]
                    for t in range(tokens):
                        acc[t] += v * xt[c, t]
                s = scale[r]
                for t in range(tokens):
                    out[r, t] = acc[t] * s

    def csr_mat_small(indptr, indices, values, scale, xt, out, parts):
        # few tokens: eight running sums in registers per row (an accumulator array in memory
        # would make every nonzero wait on a store and a reload of it)
        rows = indptr.shape[0] - 1
        tokens = xt.shape[1]
        full = tokens - tokens % 8
        step = (rows + parts - 1) // parts
        for p in prange(parts):
            for r in range(p * step, min(rows, (p + 1) * step)):
                lo = indptr[r]
                hi = indptr[r + 1]
                s = scale[r]
                for t0 in range(0, full, 8):
                    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = np.float32(0.0)
                    for k in range(lo, hi):
                        v = np.float32(values[k])
                        c = indices[k]
                        a0 += v * xt[c, t0]
                        a1 += v * xt[c, t0 + 1]
                        a2 += v * xt[c, t0 + 2]
                        a3 += v * xt[c, t0 + 3]
                        a4 += v * xt[c, t0 + 4]
                        a5 += v * xt[c, t0 + 5]
                        a6 += v * xt[c, t0 + 6]
                        a7 += v * xt[c, t0 + 7]
                    out[r, t0] = a0 * s
                    out[r, t0 + 1] = a1 * s
                    out[r, t0 + 2] = a2 * s
                    out[r, t0 + 3] = a3 * s
                    out[r, t0 + 4] = a4 * s
                    out[r, t0 + 5] = a5 * s
                    out[r, t0 + 6] = a6 * s
                    out[r, t0 + 7] = a7 * s
                for t in range(full, tokens):
                    a = np.float32(0.0)
                    for k in range(lo, hi):
                        a += np.float32(values[k]) * xt[indices[k], t]
                    out[r, t] = a * s

    def bsr_mat(indptr, indices, blocks, xt, out, parts):
        # blocks: (nblocks, bh, bw); out: (out, tokens)
        block_rows = indptr.shape[0] - 1
        bh = blocks.shape[1]
        bw = blocks.shape[2]
        tokens = xt.shape[1]
        step = (block_rows + parts - 1) // parts
        for p in prange(parts):
            acc = np.zeros((bh, tokens), dtype=np.float32)
            for br in range(p * step, min(block_rows, (p + 1) * step)):
                acc[:, :] = 0.0
                for k in range(indptr[br], indptr[br + 1]):
                    c0 = indices[k] * bw
                    for i in range(bh):
                        for j in range(bw):
                            v = blocks[k, i, j]
                            for t in range(tokens):
                                acc[i, t] += v * xt[c0 + j, t]
                for i in range(bh):
                    for t in range(tokens):
                        out[br * bh + i, t] = acc[i, t]

    def nm_mat(values, slots, n, m, scale, xt, out, parts):
        rows = values.shape[0]
        kept = values.shape[1]
        tokens = xt.shape[1]
        step = (rows + parts - 1) // parts
        for p in prange(parts):
            acc = np.zeros(tokens, dtype=np.float32)
            for r in range(p * step, min(rows, (p + 1) * step)):
                acc[:] = 0.0
                for k in range(kept):
                    c = (k // n) * m + slots[r, k]
                    v = np.float32(values[r, k])
                    for t in range(tokens):
                        acc[t] += v * xt[c, t]
                s = scale[r]
                for t in range(tokens):
                    out[r, t] = acc[t] * s

    def dense_skip(wt, x, out, parts):
        # wt: (in, out) dense; x: (tokens, in) with many zeros; out: (tokens, out).
        # Each nonzero input adds one contiguous weight row: zero inputs cost no weight traffic.
        tokens = x.shape[0]
        n_in = wt.shape[0]
        n_out = wt.shape[1]
        step = (n_out + parts - 1) // parts
        for p in prange(parts):
            lo = p * step
            hi = min(n_out, lo + step)
            acc = np.zeros(max(hi - lo, 0), dtype=np.float32)
            for t in range(tokens):
                acc[:] = 0.0
                for j in range(n_in):
                    v = x[t, j]
                    if v != 0.0:
                        row = wt[j, lo:hi]  # a slice, not wt[j, lo + o]: numba vectorises it
                        for o in range(hi - lo):
                            acc[o] += v * row[o]
                for o in range(hi - lo):
                    out[t, lo + o] = acc[o]

    def csc_skip(colptr, rows, values, scale, x, out, parts):
        # weight-sparse and activation-sparse: only columns of nonzero inputs, only their nonzeros
        tokens = x.shape[0]
        n_in = colptr.shape[0] - 1
        n_out = out.shape[1]
        for p in prange(parts):
            acc = np.zeros(n_out, dtype=np.float32)
            for t in range(p, tokens, parts):
                acc[:] = 0.0
                for j in range(n_in):
                    v = x[t, j]
                    if v != 0.0:
                        for k in range(colptr[j], colptr[j + 1]):
                            acc[rows[k]] += v * np.float32(values[k])
                for o in range(n_out):
                    out[t, o] = acc[o] * scale[o]

    return {
        "csr_vec": csr_vec,
        "csr_mat": csr_mat,
        "csr_mat_small": csr_mat_small,
        "bsr_mat": bsr_mat,
        "nm_mat": nm_mat,
        "dense_skip": dense_skip,
        "csc_skip": csc_skip,
    }


@functools.cache
def _numba_kernels(parallel: bool) -> dict[str, Any]:
    """The kernels compiled by numba (once per process, cached on disk): serial for one thread,
    ``parallel=True`` for several (numba's thread pool spins, so one thread runs without it)."""
    import numba

    njit: Any = numba.njit
    return {name: njit(parallel=parallel, cache=True, nogil=True)(fn) for name, fn in _kernel_sources().items()}


def _compiled(work: int) -> tuple[dict[str, Any], int]:
    """The kernels for the current thread count and the number of slices to split ``work``
    (multiply-adds) into: serial below :data:`PARALLEL_MIN_WORK`, where waking threads costs more."""
    import numba

    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    if work < PARALLEL_MIN_WORK:
        threads = 1
    if threads > 1 and numba.get_num_threads() != threads:
        numba.set_num_threads(threads)
    return _numba_kernels(threads > 1), threads


def set_threads(threads: int) -> None:
    """Run the kernels (numba and torch) on ``threads`` threads."""
    torch.set_num_threads(threads)
    if HAVE_NUMBA:
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().contiguous().numpy()


# ``use_numba=None`` below means: numba when installed (read at call time, so tests can switch it off).


def csr_matmul(
    x: torch.Tensor,
    indptr: np.ndarray,
    indices: np.ndarray,
    values: np.ndarray,
    scale: np.ndarray,
    out_features: int,
    use_numba: bool | None = None,
) -> torch.Tensor:
    """``x @ W.T`` for a CSR weight (float32 or int8 values times a per-row ``scale``); ``x`` is (tokens, in)."""
    tokens = x.shape[0]
    if HAVE_NUMBA if use_numba is None else use_numba:
        kernels, parts = _compiled(values.size * tokens)
        if tokens == 1:
            out = np.empty(out_features, dtype=np.float32)
            kernels["csr_vec"](indptr, indices, values, scale, _np(x[0]), out, parts)
            return torch.from_numpy(out).unsqueeze(0)
        out2 = np.empty((out_features, tokens), dtype=np.float32)
        name = "csr_mat_small" if tokens < SMALL_BATCH else "csr_mat"
        kernels[name](indptr, indices, values, scale, np.ascontiguousarray(_np(x).T), out2, parts)
        return torch.from_numpy(out2).T
    weight = _torch_csr(indptr, indices, values, scale, out_features, x.shape[1])
    return (weight @ x.T).T


def _torch_csr(
    indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, scale: np.ndarray, rows: int, cols: int
) -> torch.Tensor:
    dequant = values.astype(np.float32) * np.repeat(scale, np.diff(indptr)) if values.dtype != np.float32 else values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(
            torch.from_numpy(indptr.astype(np.int64)),
            torch.from_numpy(indices.astype(np.int64)),
            torch.from_numpy(np.ascontiguousarray(dequant)),
            size=(rows, cols),
            check_invariants=False,
        )


def bsr_matmul(
    x: torch.Tensor,
    indptr: np.ndarray,
    indices: np.ndarray,
    blocks: np.ndarray,
    out_features: int,
    use_numba: bool | None = None,
) -> torch.Tensor:
    """``x @ W.T`` for a block-sparse weight: ``blocks`` (nblocks, bh, bw) at block columns ``indices``."""
    if HAVE_NUMBA if use_numba is None else use_numba:
        kernels, parts = _compiled(blocks.size * x.shape[0])
        out = np.empty((out_features, x.shape[0]), dtype=np.float32)
        kernels["bsr_mat"](indptr, indices, blocks, np.ascontiguousarray(_np(x).T), out, parts)
        return torch.from_numpy(out).T
    bh, bw = blocks.shape[1], blocks.shape[2]
    tokens = x.shape[0]
    block_rows = torch.from_numpy(np.repeat(np.arange(indptr.shape[0] - 1), np.diff(indptr)))
    gathered = x.reshape(tokens, -1, bw)[:, torch.from_numpy(indices.astype(np.int64))]  # (tokens, nblocks, bw)
    parts = torch.einsum("tkj,kij->tki", gathered, torch.from_numpy(blocks))  # (tokens, nblocks, bh)
    out = torch.zeros(tokens, out_features // bh, bh, dtype=torch.float32)
    out.index_add_(1, block_rows, parts)
    return out.reshape(tokens, out_features)


def nm_matmul(
    x: torch.Tensor,
    values: np.ndarray,
    slots: np.ndarray,
    n: int,
    m: int,
    scale: np.ndarray,
    use_numba: bool | None = None,
) -> torch.Tensor:
    """``x @ W.T`` for an N:M-packed weight: ``values`` (out, in/M*N), ``slots`` their places in each group."""
    out_features = values.shape[0]
    if HAVE_NUMBA if use_numba is None else use_numba:
        kernels, parts = _compiled(values.size * x.shape[0])
        out = np.empty((out_features, x.shape[0]), dtype=np.float32)
        kernels["nm_mat"](values, slots, n, m, scale, np.ascontiguousarray(_np(x).T), out, parts)
        return torch.from_numpy(out).T
    kept = values.shape[1]
    columns = (np.arange(kept) // n * m)[None, :] + slots.astype(np.int64)
    gathered = x[:, torch.from_numpy(columns.reshape(-1))].reshape(x.shape[0], out_features, kept)
    weight = torch.from_numpy(values.astype(np.float32) * scale[:, None])
    return torch.einsum("tok,ok->to", gathered, weight)


def dense_skip_matmul(x: torch.Tensor, weight_t: np.ndarray, use_numba: bool | None = None) -> torch.Tensor:
    """``x @ W.T`` reading only the rows of ``weight_t`` (= W.T, (in, out)) whose input entries are nonzero."""
    if HAVE_NUMBA if use_numba is None else use_numba:
        kernels, parts = _compiled(weight_t.size * x.shape[0] // 2)
        out = np.empty((x.shape[0], weight_t.shape[1]), dtype=np.float32)
        kernels["dense_skip"](weight_t, _np(x), out, parts)
        return torch.from_numpy(out)
    active = torch.nonzero(x.abs().sum(0)).flatten()
    return x[:, active] @ torch.from_numpy(weight_t)[active]


def csc_skip_matmul(
    x: torch.Tensor,
    colptr: np.ndarray,
    rows: np.ndarray,
    values: np.ndarray,
    scale: np.ndarray,
    use_numba: bool | None = None,
) -> torch.Tensor:
    """``x @ W.T`` for a CSC weight, visiting only the columns whose input entries are nonzero."""
    if HAVE_NUMBA if use_numba is None else use_numba:
        kernels, parts = _compiled(values.size * x.shape[0] // 2)
        out = np.empty((x.shape[0], scale.shape[0]), dtype=np.float32)
        kernels["csc_skip"](colptr, rows, values, scale, _np(x), out, min(parts, x.shape[0]))
        return torch.from_numpy(out)
    n_in = colptr.shape[0] - 1
    counts = np.diff(colptr)
    cols = np.repeat(np.arange(n_in), counts)
    dequant = values.astype(np.float32) * scale[rows]
    active = torch.nonzero(x.abs().sum(0)).flatten().numpy()
    keep = np.isin(cols, active)
    dense = torch.zeros(scale.shape[0], n_in)
    dense[torch.from_numpy(rows[keep].astype(np.int64)), torch.from_numpy(cols[keep])] = torch.from_numpy(dequant[keep])
    return x @ dense.T
