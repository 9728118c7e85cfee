"""The numba kernels as plain Python functions (compiled in :mod:`~prunekit.torch.deploy.sparse.kernels`).

Each computes ``out = x @ W.T (* scale) + bias`` into a preallocated ``out`` of shape
(tokens, out), so the bias costs no separate torch operation and the result needs no transpose;
each splits its output rows into ``parts`` independent slices (``prange``: one per thread when
compiled parallel, a plain loop when compiled serial). Inputs with several tokens arrive
transposed (``xt``: (in, tokens), contiguous) so the innermost loop runs over tokens.

No ``fastmath`` for the gathered kernels (CSR, which N:M also runs on): it lets LLVM vectorise the gathered dot
product with gather instructions, which measured 4-10x slower than scalar loads on the AMD EPYC
development machine. The BSR kernels read contiguous blocks and are compiled with reassociation
(:data:`FASTMATH`), so their dot products vectorise; so is the activation-skipping kernel over a dense
weight, whose rows are contiguous too (``contract`` lets its multiply-adds fuse).
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Kernels compiled with ``fastmath={"reassoc", "contract"}`` (contiguous dot products only).
FASTMATH = frozenset({"bsr_vec", "bsr_mat", "dense_skip"})
#: Kernels compiled with LLVM's SLP vectoriser (independent running sums that fit one vector register).
SLP = frozenset({"csr_mat_small"})


def kernel_sources() -> dict[str, Any]:
    """Every kernel by name, as a plain Python function."""
    from numba import prange

    def csr_vec(indptr, indices, values, scale, bias, x, out, parts):
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
                out[0, r] = ((a0 + a1) + (a2 + a3)) * scale[r] + bias[r]

    def csr_mat(indptr, indices, values, scale, bias, xt, out, parts):
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
                b = bias[r]
                for t in range(tokens):
                    out[t, r] = acc[t] * s + b

    def csr_mat_small(indptr, indices, values, scale, bias, xt, out, parts):
        # few tokens: eight running sums in registers per row (an accumulator array in memory
        # would make every nonzero wait on a store and a reload of it). The caller pads the tokens
        # to a multiple of 8 (a leftover token costs a pass of its own); the leftover loop keeps the
        # kernel exact for any count, and dropping it measured 35 % slower code for the eights
        rows = indptr.shape[0] - 1
        tokens = xt.shape[1]
        full = tokens - tokens % 8
        step = (rows + parts - 1) // parts
        for p in prange(parts):
            for r in range(p * step, min(rows, (p + 1) * step)):
                lo = indptr[r]
                hi = indptr[r + 1]
                s = scale[r]
                b = bias[r]
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
                    out[t0, r] = a0 * s + b
                    out[t0 + 1, r] = a1 * s + b
                    out[t0 + 2, r] = a2 * s + b
                    out[t0 + 3, r] = a3 * s + b
                    out[t0 + 4, r] = a4 * s + b
                    out[t0 + 5, r] = a5 * s + b
                    out[t0 + 6, r] = a6 * s + b
                    out[t0 + 7, r] = a7 * s + b
                for t in range(full, tokens):
                    a = np.float32(0.0)
                    for k in range(lo, hi):
                        a += np.float32(values[k]) * xt[indices[k], t]
                    out[t, r] = a * s + b

    def bsr_vec(indptr, indices, blocks, bias, x, out, parts):
        # one token: per block row, bh dot products of contiguous block rows with a slice of x
        block_rows = indptr.shape[0] - 1
        bh = blocks.shape[1]
        bw = blocks.shape[2]
        step = (block_rows + parts - 1) // parts
        for p in prange(parts):
            acc = np.zeros(bh, dtype=np.float32)
            for br in range(p * step, min(block_rows, (p + 1) * step)):
                acc[:] = 0.0
                for k in range(indptr[br], indptr[br + 1]):
                    c0 = indices[k] * bw
                    for i in range(bh):
                        s = np.float32(0.0)
                        for j in range(bw):
                            s += blocks[k, i, j] * x[c0 + j]
                        acc[i] += s
                for i in range(bh):
                    out[0, br * bh + i] = acc[i] + bias[br * bh + i]

    def bsr_mat(indptr, indices, blocks, bias, xt, out, parts):
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
                    b = bias[br * bh + i]
                    for t in range(tokens):
                        out[t, br * bh + i] = acc[i, t] + b

    def dense_skip(wt, x, scale, threshold, bias, out, parts):
        # wt: (in, out) dense, the weight transposed; x: (tokens, in); scale: (in,) the input scale of the
        # scores; out: (tokens, out). Per token, the surviving inputs v_j = x_j * scale_j (|v_j| >= threshold)
        # are listed first; their weight rows, contiguous, are then summed eight at a time, so the output
        # slice is loaded and stored once per eight rows, not once per row. Returns the count that survived.
        tokens = x.shape[0]
        n_in = wt.shape[0]
        n_out = wt.shape[1]
        step = ((n_out + parts - 1) // parts + 15) // 16 * 16  # slices start on 64-byte boundaries
        idx = np.empty(n_in, dtype=np.int64)
        val = np.empty(n_in, dtype=np.float32)
        survived = 0
        for t in range(tokens):
            m = 0
            for j in range(n_in):
                v = x[t, j] * scale[j]
                if abs(v) >= threshold and v != 0.0:
                    idx[m] = j
                    val[m] = v
                    m += 1
            survived += m
            for p in prange(parts):
                lo = min(n_out, p * step)
                hi = min(n_out, lo + step)
                acc = out[t, lo:hi]
                acc[:] = bias[lo:hi]
                k = 0
                while k + 8 <= m:
                    r0 = wt[idx[k], lo:hi]
                    r1 = wt[idx[k + 1], lo:hi]
                    r2 = wt[idx[k + 2], lo:hi]
                    r3 = wt[idx[k + 3], lo:hi]
                    r4 = wt[idx[k + 4], lo:hi]
                    r5 = wt[idx[k + 5], lo:hi]
                    r6 = wt[idx[k + 6], lo:hi]
                    r7 = wt[idx[k + 7], lo:hi]
                    v0 = val[k]
                    v1 = val[k + 1]
                    v2 = val[k + 2]
                    v3 = val[k + 3]
                    v4 = val[k + 4]
                    v5 = val[k + 5]
                    v6 = val[k + 6]
                    v7 = val[k + 7]
                    for o in range(hi - lo):
                        acc[o] += ((v0 * r0[o] + v1 * r1[o]) + (v2 * r2[o] + v3 * r3[o])) + (
                            (v4 * r4[o] + v5 * r5[o]) + (v6 * r6[o] + v7 * r7[o])
                        )
                    k += 8
                while k < m:
                    row = wt[idx[k], lo:hi]
                    v = val[k]
                    for o in range(hi - lo):
                        acc[o] += v * row[o]
                    k += 1
        return survived

    def csc_skip(colptr, rows, values, scale, x, threshold, bias, out, parts):
        # weight-sparse and activation-sparse: only columns of surviving inputs, only their nonzeros
        tokens = x.shape[0]
        n_in = colptr.shape[0] - 1
        n_out = out.shape[1]
        for p in prange(parts):
            acc = np.zeros(n_out, dtype=np.float32)
            for t in range(p, tokens, parts):
                acc[:] = 0.0
                for j in range(n_in):
                    v = x[t, j]
                    if abs(v) >= threshold and v != 0.0:
                        for k in range(colptr[j], colptr[j + 1]):
                            acc[rows[k]] += v * np.float32(values[k])
                for o in range(n_out):
                    out[t, o] = acc[o] * scale[o] + bias[o]

    return {
        "csr_vec": csr_vec,
        "csr_mat": csr_mat,
        "csr_mat_small": csr_mat_small,
        "bsr_vec": bsr_vec,
        "bsr_mat": bsr_mat,
        "dense_skip": dense_skip,
        "csc_skip": csc_skip,
    }
