"""CPU kernels for sparse weights and sparse activations: numba when installed, torch otherwise.

Every kernel computes ``y = x @ W.T`` for a ``(tokens, in)`` float32 input ``x`` and a
``(out, in)`` weight stored in one of four layouts:

- **CSR** (unstructured): ``indptr`` (out + 1), ``indices`` (column of each nonzero), ``values``;
  values float32, or int8 with one float32 scale per output row.
- **BSR** (block sparsity): the same over ``(bh, bw)`` blocks, ``values`` of shape (nblocks, bh, bw).
- **N:M packed**: ``values`` (out, in / M * N) and ``columns`` (uint16, the input of each kept
  value): the same count in every row, so the file needs no row pointers; the numba path runs
  it on the CSR kernels with a regular row pointer built at call time.
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

from prunekit.torch.deploy.sparse.numba_sources import FASTMATH, SLP, kernel_sources

HAVE_NUMBA = importlib.util.find_spec("numba") is not None
#: Below this many tokens the CSR kernel keeps its sums in registers; from it on, in a vectorised array.
SMALL_BATCH = 16
#: Multiply-adds below which a kernel runs on one thread (waking numba's pool costs tens of microseconds).
PARALLEL_MIN_WORK = 1 << 22


@functools.cache
def _numba_kernels(parallel: bool) -> dict[str, Any]:
    """The kernels compiled by numba (once per process, cached on disk; each signature on its first call):
    serial for one thread, ``parallel=True`` for several (numba's thread pool spins, so one thread runs without it)."""
    import numba

    njit: Any = numba.njit
    return {
        name: njit(parallel=parallel, cache=True, nogil=True, fastmath={"reassoc", "contract"} if name in FASTMATH else False)(fn)
        for name, fn in kernel_sources().items()
    }


#: The (kernel, argument dtypes) pairs whose signature :func:`_call` has compiled with SLP (or found compiled).
_SLP_READY: set[tuple[Any, tuple[str, ...]]] = set()


def _call(kernels: dict[str, Any], name: str, *args: Any) -> None:
    """Run kernel ``name``; one of :data:`SLP` is first compiled for these arguments' types with SLP on, when
    they are new to it (only the signatures a model uses are compiled: each costs about a second)."""
    kernel = kernels[name]
    if name in SLP:
        key = (kernel, tuple(a.dtype.str if isinstance(a, np.ndarray) else type(a).__name__ for a in args))
        if key not in _SLP_READY:
            import numba

            signature = tuple(numba.typeof(a) for a in args)
            if signature not in kernel.signatures:
                _compile_with_slp(kernel, signature)
            _SLP_READY.add(key)
    kernel(*args)


def _compile_with_slp(kernel: Any, signature: tuple[Any, ...]) -> None:
    """Compile ``kernel`` for ``signature`` with LLVM's SLP vectoriser on.

    numba turns SLP off for every function since numba#8705 (miscompilations in other code);
    in the few-token CSR kernel it packs the eight running sums into one vector register, which
    measured 1.8-2x faster (3072x768 at 90 %, 8 tokens, 1 thread: 0.37 to 0.20 ms). numba reads the
    flag when it optimises a function, so it is set only while this signature compiles; the tests
    check the result against the dense product.
    """
    from numba.core import config

    previous = config.SLP_VECTORIZE
    config.SLP_VECTORIZE = 1
    try:
        kernel.compile(signature)
    finally:
        config.SLP_VECTORIZE = previous


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


def _bias(bias: np.ndarray | None, size: int) -> np.ndarray:
    return np.zeros(size, dtype=np.float32) if bias is None else bias


def _run(name: str, work: int, weight: tuple[Any, ...], bias: np.ndarray | None, x: torch.Tensor, rows: int) -> torch.Tensor:
    """Run kernel ``name`` (``_vec`` for one token, ``_mat_small`` below :data:`SMALL_BATCH` tokens when it
    has one, ``_mat`` otherwise) on ``x`` (tokens, in) into a fresh (tokens, rows) output.

    ``_mat_small`` gets tokens in eights: 2-7 or 9-15 tokens are padded with zero tokens, one pass
    over the weight per eight (3072x768 at 90 %, 1 thread, CPU time: 4 tokens 0.75 to 0.39 ms,
    12 tokens 1.14 to 0.84 ms, 15 tokens 1.72 to 0.84 ms, against one pass per leftover token)."""
    kernels, parts = _compiled(work)
    tokens = x.shape[0]
    bias = _bias(bias, rows)
    if tokens == 1:
        out = np.empty((1, rows), dtype=np.float32)
        _call(kernels, f"{name}_vec", *weight, bias, _np(x[0]), out, parts)
        return torch.from_numpy(out)
    if tokens < SMALL_BATCH and f"{name}_mat_small" in kernels:
        padded = -(-tokens // 8) * 8
        xt = np.zeros((x.shape[1], padded), dtype=np.float32)
        xt[:, :tokens] = _np(x).T
        out = np.empty((padded, rows), dtype=np.float32)
        _call(kernels, f"{name}_mat_small", *weight, bias, xt, out, parts)
        return torch.from_numpy(out[:tokens])
    out = np.empty((tokens, rows), dtype=np.float32)
    _call(kernels, f"{name}_mat", *weight, bias, np.ascontiguousarray(_np(x).T), out, parts)
    return torch.from_numpy(out)


def _plus(y: torch.Tensor, bias: np.ndarray | None) -> torch.Tensor:
    return y if bias is None else y + torch.from_numpy(bias)


# ``use_numba=None`` below means: numba when installed (read at call time, so tests can switch it off).
# ``bias`` (float32, one per output) is added inside the numba kernels.


def csr_matmul(
    x: torch.Tensor,
    indptr: np.ndarray,
    indices: np.ndarray,
    values: np.ndarray,
    scale: np.ndarray,
    out_features: int,
    bias: np.ndarray | None = None,
    use_numba: bool | None = None,
) -> torch.Tensor:
    """``x @ W.T + bias`` for a CSR weight (float32 or int8 values times a per-row ``scale``); ``x`` is (tokens, in)."""
    if HAVE_NUMBA if use_numba is None else use_numba:
        return _run("csr", values.size * x.shape[0], (indptr, indices, values, scale), bias, x, out_features)
    weight = _torch_csr(indptr, indices, values, scale, out_features, x.shape[1])
    return _plus((weight @ x.T).T, bias)


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
    bias: np.ndarray | None = None,
    use_numba: bool | None = None,
) -> torch.Tensor:
    """``x @ W.T + bias`` for a block-sparse weight: ``blocks`` (nblocks, bh, bw) at block columns ``indices``."""
    if HAVE_NUMBA if use_numba is None else use_numba:
        return _run("bsr", blocks.size * x.shape[0], (indptr, indices, blocks), bias, x, out_features)
    bh, bw = blocks.shape[1], blocks.shape[2]
    tokens = x.shape[0]
    block_rows = torch.from_numpy(np.repeat(np.arange(indptr.shape[0] - 1), np.diff(indptr)))
    gathered = x.reshape(tokens, -1, bw)[:, torch.from_numpy(indices.astype(np.int64))]  # (tokens, nblocks, bw)
    parts = torch.einsum("tkj,kij->tki", gathered, torch.from_numpy(blocks))  # (tokens, nblocks, bh)
    out = torch.zeros(tokens, out_features // bh, bh, dtype=torch.float32)
    out.index_add_(1, block_rows, parts)
    return _plus(out.reshape(tokens, out_features), bias)


def nm_matmul(
    x: torch.Tensor,
    values: np.ndarray,
    columns: np.ndarray,
    scale: np.ndarray,
    bias: np.ndarray | None = None,
    use_numba: bool | None = None,
) -> torch.Tensor:
    """``x @ W.T + bias`` for an N:M-packed weight: ``values`` (out, in/M*N) at input ``columns``."""
    out_features, kept = values.shape
    if HAVE_NUMBA if use_numba is None else use_numba:
        # N:M rows are CSR rows of equal length: the CSR kernels with a regular row pointer
        weight = (_regular_indptr(out_features, kept), columns.reshape(-1), values.reshape(-1), scale)
        return _run("csr", values.size * x.shape[0], weight, bias, x, out_features)
    gathered = x[:, torch.from_numpy(columns.reshape(-1).astype(np.int64))].reshape(x.shape[0], out_features, kept)
    weight = torch.from_numpy(values.astype(np.float32) * scale[:, None])
    return _plus(torch.einsum("tok,ok->to", gathered, weight), bias)


@functools.lru_cache(maxsize=64)
def _regular_indptr(rows: int, per_row: int) -> np.ndarray:
    """The CSR row pointer of ``rows`` rows of ``per_row`` values each (built once per layer shape)."""
    return np.arange(0, rows * per_row + 1, per_row, dtype=np.int64)


def dense_skip_matmul(
    x: torch.Tensor,
    weight_t: np.ndarray,
    threshold: float,
    bias: np.ndarray | None = None,
    input_scale: np.ndarray | None = None,
    use_numba: bool | None = None,
) -> tuple[torch.Tensor, int]:
    """``x' @ W.T + bias`` and the count of surviving entries, reading only the rows of ``weight_t`` (= W.T,
    (in, out)) of those entries: ``x'`` = ``x * input_scale`` where ``|x * input_scale| >= threshold``, else 0
    (``input_scale`` all ones when ``None``). The scaling, the selection and the count run inside the kernel."""
    n_in, n_out = weight_t.shape
    scale = _ones(n_in) if input_scale is None else input_scale
    if HAVE_NUMBA if use_numba is None else use_numba:
        kernels, parts = _compiled(weight_t.size * x.shape[0] // 2)
        out = np.empty((x.shape[0], n_out), dtype=np.float32)
        survived = kernels["dense_skip"](weight_t, _np(x), scale, np.float32(threshold), _bias(bias, n_out), out, parts)
        return torch.from_numpy(out), int(survived)
    x = x * torch.from_numpy(scale)
    x = torch.where(x.abs() < threshold, torch.zeros((), dtype=x.dtype), x)
    active = torch.nonzero(x.abs().sum(0)).flatten()
    return _plus(x[:, active] @ torch.from_numpy(weight_t)[active], bias), int((x != 0).sum())


@functools.lru_cache(maxsize=64)
def _ones(size: int) -> np.ndarray:
    """A float32 vector of ``size`` ones (built once per input width; the kernels only read it)."""
    return np.ones(size, dtype=np.float32)


def csc_skip_matmul(
    x: torch.Tensor,
    colptr: np.ndarray,
    rows: np.ndarray,
    values: np.ndarray,
    scale: np.ndarray,
    threshold: float,
    bias: np.ndarray | None = None,
    use_numba: bool | None = None,
) -> torch.Tensor:
    """``x' @ W.T + bias`` for a CSC weight, visiting only the columns whose input entries survive the threshold."""
    if HAVE_NUMBA if use_numba is None else use_numba:
        kernels, parts = _compiled(values.size * x.shape[0] // 2)
        out = np.empty((x.shape[0], scale.shape[0]), dtype=np.float32)
        kernels["csc_skip"](
            colptr, rows, values, scale, _np(x), np.float32(threshold), _bias(bias, scale.shape[0]), out, min(parts, x.shape[0])
        )
        return torch.from_numpy(out)
    x = torch.where(x.abs() < threshold, torch.zeros((), dtype=x.dtype), x)
    n_in = colptr.shape[0] - 1
    counts = np.diff(colptr)
    cols = np.repeat(np.arange(n_in), counts)
    dequant = values.astype(np.float32) * scale[rows]
    active = torch.nonzero(x.abs().sum(0)).flatten().numpy()
    keep = np.isin(cols, active)
    dense = torch.zeros(scale.shape[0], n_in)
    dense[torch.from_numpy(rows[keep].astype(np.int64)), torch.from_numpy(cols[keep])] = torch.from_numpy(dequant[keep])
    return _plus(x @ dense.T, bias)
