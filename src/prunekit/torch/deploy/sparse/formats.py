"""Sparse weight layouts built from a dense (pruned) weight or straight from its nonzeros.

:func:`detect_layout` reads the zero pattern of a weight and names the layout that fits it:
``"nm"`` when every group of M inputs keeps at most N (2:4, 1:4, ...) and nearly N of M are kept, ``"bsr"`` when the zeros
come in whole blocks, ``"csr"`` otherwise; ``int8`` when every row's nonzeros are integer
multiples of one scale (a model quantized per output channel, as the compact file stores it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from prunekit.errors import ConfigError

NM_PATTERNS = ((2, 4), (1, 4), (4, 8), (2, 8), (1, 2))
BLOCK_SHAPES = ((16, 16), (8, 8), (4, 4), (1, 16), (1, 8), (1, 4), (4, 1), (8, 1))


@dataclass(frozen=True)
class Layout:
    """Which sparse layout a weight takes: ``kind`` is ``"csr"``, ``"bsr"`` or ``"nm"``; ``block`` is
    ``(bh, bw)`` for BSR and ``(n, m)`` for N:M; ``int8`` whether the values are stored as int8."""

    kind: str
    block: tuple[int, int] = (1, 1)
    int8: bool = False

    def describe(self) -> str:
        """``"csr"``, ``"bsr 8x8"``, ``"2:4"``, with ``" int8"`` appended when quantized."""
        name = {"csr": "csr", "bsr": f"bsr {self.block[0]}x{self.block[1]}", "nm": f"{self.block[0]}:{self.block[1]}"}[self.kind]
        return name + (" int8" if self.int8 else "")


def int8_scales(weight: np.ndarray) -> np.ndarray | None:
    """Per-row scales ``s`` with ``weight == q * s`` for integers ``|q| <= 127``, or None if the weight is not so quantized."""
    peak = np.abs(weight).max(axis=1)
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    q = weight / scale[:, None]
    if not np.all(np.abs(q - np.rint(q)) <= 1e-3):
        return None
    return scale


def detect_layout(weight: np.ndarray) -> Layout:
    """The layout that fits a 2-D weight's zero pattern (see the module docstring).

    Example::

        detect_layout(w24).describe()   # "2:4"
    """
    if weight.ndim != 2:
        raise ConfigError(f"detect_layout expects a 2-D weight, got shape {list(weight.shape)}")
    int8 = int8_scales(weight) is not None and np.count_nonzero(weight) > 0
    rows, cols = np.nonzero(weight)
    return detect_layout_coo(weight.shape, rows, cols, int8)


def detect_layout_coo(shape: tuple[int, ...], rows: np.ndarray, cols: np.ndarray, int8: bool = False) -> Layout:
    """The layout that fits the nonzero positions ``(rows, cols)`` of a weight of ``shape``, read
    without a dense copy (so a compact file's positions go straight in). ``int8``: values are int8."""
    if len(shape) != 2:
        raise ConfigError(f"detect_layout expects a 2-D weight, got shape {list(shape)}")
    n_rows, n_cols = int(shape[0]), int(shape[1])
    nnz = int(rows.size)
    size = n_rows * n_cols
    for n, m in NM_PATTERNS:
        # an N:M pack stores N of every M: worth it only when the weight really is (nearly) that dense
        if n_cols % m == 0 and nnz >= 0.9 * size * n / m and _max_run(_cell_ids(rows, cols, n_cols, 1, m)) <= n:
            return Layout("nm", (n, m), int8)
    for bh, bw in BLOCK_SHAPES:
        if n_rows % bh or n_cols % bw or nnz == 0:
            continue
        occupied = np.zeros((n_rows // bh) * (n_cols // bw), dtype=bool)  # one byte per block: no sort of the nonzeros
        occupied[_cell_ids(rows, cols, n_cols, bh, bw)] = True
        if np.count_nonzero(occupied) * bh * bw <= 1.25 * nnz:
            return Layout("bsr", (bh, bw), False)
    return Layout("csr", (1, 1), int8)


def _cell_ids(rows: np.ndarray, cols: np.ndarray, n_cols: int, bh: int, bw: int) -> np.ndarray:
    """The row-major index of the (bh, bw) cell holding each nonzero, in int32 when it fits: a compact
    file's loader checks several cell shapes, each with two small temporaries (no dense copy)."""
    cells = (int(rows.max(initial=0)) // bh + 1) * (n_cols // bw)
    dtype = np.int32 if cells < 2**31 else np.int64
    ids = np.floor_divide(rows, bh, dtype=dtype, casting="same_kind")
    ids *= n_cols // bw
    ids += np.floor_divide(cols, bw, dtype=dtype, casting="same_kind")
    return ids


def _max_run(sorted_ids: np.ndarray) -> int:
    """The longest run of equal values in a sorted array (the most nonzeros of one group)."""
    if sorted_ids.size == 0:
        return 0
    edges = np.flatnonzero(np.diff(sorted_ids)) + 1
    return int(np.diff(np.concatenate(([0], edges, [sorted_ids.size]))).max())


def _index_dtype(size: int) -> type:
    """uint16 column indices when they fit (a quarter less memory traffic per nonzero than int32)."""
    return np.uint16 if size <= 2**16 else np.int32


@dataclass
class CSR:
    """Compressed rows of a (rows, cols) weight; ``values`` float32 or int8 times per-row ``scale``."""

    shape: tuple[int, int]
    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    scale: np.ndarray

    @classmethod
    def from_dense(cls, weight: np.ndarray, int8: bool = False) -> CSR:
        """The nonzeros of ``weight`` by row; ``int8`` stores ``round(w / scale)`` with the row scales."""
        rows, cols = np.nonzero(weight)
        return cls.from_coo(weight.shape, rows, cols, weight[rows, cols], int8_scales(weight) if int8 else None)

    @classmethod
    def from_coo(
        cls, shape: tuple[int, ...], rows: np.ndarray, cols: np.ndarray, values: np.ndarray, scale: np.ndarray | None
    ) -> CSR:
        """From row-major sorted coordinates; ``values`` already int8 when ``scale`` comes with int8 values."""
        if len(shape) != 2:
            raise ConfigError(f"a CSR weight is 2-D, got shape {list(shape)}")
        indptr = np.zeros(shape[0] + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=shape[0]), out=indptr[1:])
        if scale is None:
            stored = values.astype(np.float32)
            scale = np.ones(shape[0], dtype=np.float32)
        elif values.dtype == np.int8:
            stored = values
        else:
            stored = np.rint(values / scale[rows]).astype(np.int8)
        return cls((int(shape[0]), int(shape[1])), indptr, cols.astype(_index_dtype(shape[1])), stored, scale.astype(np.float32))

    @property
    def nnz(self) -> int:
        return int(self.values.size)

    def to_dense(self) -> np.ndarray:
        """The dense float32 weight (for checks and for a layer that stays dense)."""
        dense = np.zeros(self.shape, dtype=np.float32)
        rows = np.repeat(np.arange(self.shape[0]), np.diff(self.indptr))
        dense[rows, self.indices] = self.values.astype(np.float32) * self.scale[rows]
        return dense

    def to_csc(self) -> CSR:
        """The same weight by column (a CSR of the transpose): ``indptr`` over inputs, ``indices`` = output rows.

        The ``scale`` stays per output row (indexed by ``indices``)."""
        rows = np.repeat(np.arange(self.shape[0], dtype=np.int32), np.diff(self.indptr))
        order = np.argsort(self.indices, kind="stable")
        colptr = np.zeros(self.shape[1] + 1, dtype=np.int64)
        np.cumsum(np.bincount(self.indices, minlength=self.shape[1]), out=colptr[1:])
        return CSR(
            (self.shape[1], self.shape[0]),
            colptr,
            rows[order].astype(_index_dtype(self.shape[0])),
            self.values[order],
            self.scale,
        )


@dataclass
class BSR:
    """Block-compressed rows: ``blocks`` (nblocks, bh, bw) at block columns ``indices``, by block row."""

    shape: tuple[int, int]
    indptr: np.ndarray
    indices: np.ndarray
    blocks: np.ndarray

    @classmethod
    def from_dense(cls, weight: np.ndarray, block: tuple[int, int]) -> BSR:
        """Keep every (bh, bw) block of ``weight`` that has a nonzero."""
        rows, cols = np.nonzero(weight)
        return cls.from_coo(weight.shape, rows, cols, weight[rows, cols], block)

    @classmethod
    def from_coo(
        cls, shape: tuple[int, ...], rows: np.ndarray, cols: np.ndarray, values: np.ndarray, block: tuple[int, int]
    ) -> BSR:
        """From nonzero coordinates and float values (dequantised): the blocks that hold a nonzero."""
        bh, bw = block
        n_rows, n_cols = int(shape[0]), int(shape[1])
        if n_rows % bh or n_cols % bw:
            raise ConfigError(f"block {bh}x{bw} does not tile a weight of shape {list(shape)}")
        rows = rows.astype(np.int64, copy=False)
        cols = cols.astype(np.int64, copy=False)
        ids, where = np.unique((rows // bh) * (n_cols // bw) + cols // bw, return_inverse=True)
        blocks = np.zeros((ids.size, bh, bw), dtype=np.float32)
        blocks[where, rows % bh, cols % bw] = values
        indptr = np.zeros(n_rows // bh + 1, dtype=np.int64)
        np.cumsum(np.bincount(ids // (n_cols // bw), minlength=n_rows // bh), out=indptr[1:])
        return cls((n_rows, n_cols), indptr, (ids % (n_cols // bw)).astype(np.int32), blocks)

    def to_dense(self) -> np.ndarray:
        """The dense float32 weight (for a layer measured against, or reverted to, dense)."""
        bh, bw = self.blocks.shape[1:]
        dense = np.zeros((self.shape[0] // bh, bh, self.shape[1] // bw, bw), dtype=np.float32)
        block_rows = np.repeat(np.arange(self.shape[0] // bh), np.diff(self.indptr))
        dense[block_rows, :, self.indices, :] = self.blocks
        return dense.reshape(self.shape)


@dataclass
class NMPacked:
    """N:M packing: ``values`` (rows, cols / M * N) and their input ``columns`` (uint16 when they fit), the
    same count in every row (no row pointers); int8 values optional.

    Columns, not 1-byte slots within each group: recomputing a column from a slot per value
    (``group * M + slot``) measured 2.5-40x slower in the numba kernels than loading it."""

    shape: tuple[int, int]
    n: int
    m: int
    values: np.ndarray
    columns: np.ndarray
    scale: np.ndarray

    @classmethod
    def from_dense(cls, weight: np.ndarray, n: int, m: int, int8: bool = False) -> NMPacked:
        """Pack a weight with at most ``n`` nonzeros in each group of ``m`` inputs (zeros fill short groups)."""
        rows, cols = np.nonzero(weight)
        scale = int8_scales(weight) if int8 else None
        return cls.from_coo(weight.shape, rows, cols, weight[rows, cols], n, m, scale)

    @classmethod
    def from_coo(
        cls,
        shape: tuple[int, ...],
        rows: np.ndarray,
        cols: np.ndarray,
        values: np.ndarray,
        n: int,
        m: int,
        scale: np.ndarray | None,
    ) -> NMPacked:
        """From row-major sorted coordinates; ``values`` int8 (or float, rounded) when ``scale`` is given."""
        n_rows, n_cols = int(shape[0]), int(shape[1])
        if n_cols % m:
            raise ConfigError(f"{n}:{m} packing needs the input size ({n_cols}) to be a multiple of {m}")
        rows = rows.astype(np.int64, copy=False)
        cols = cols.astype(np.int64, copy=False)
        group = rows * (n_cols // m) + cols // m
        # rank of each nonzero inside its group: coordinates are sorted, so a group's nonzeros are adjacent
        starts = np.ones(group.size, dtype=bool)
        starts[1:] = group[1:] != group[:-1]
        index = np.arange(group.size)
        rank = index - np.maximum.accumulate(np.where(starts, index, 0))
        if rank.max(initial=0) >= n:
            raise ConfigError(f"the weight is not {n}:{m} sparse: some group of {m} inputs holds more than {n} nonzeros")
        if scale is None:
            stored = np.zeros((n_rows, n_cols // m, n), dtype=np.float32)
            scale = np.ones(n_rows, dtype=np.float32)
        else:
            stored = np.zeros((n_rows, n_cols // m, n), dtype=np.int8)
            if values.dtype != np.int8:
                values = np.rint(values / scale[rows]).astype(np.int8)
        # a short group's padding zeros point at the group's first input
        columns = np.broadcast_to((np.arange(n_cols // m) * m)[None, :, None], (n_rows, n_cols // m, n)).copy()
        stored[rows, cols // m, rank] = values
        columns[rows, cols // m, rank] = cols
        return cls(
            (n_rows, n_cols),
            n,
            m,
            stored.reshape(n_rows, -1),
            columns.reshape(n_rows, -1).astype(_index_dtype(n_cols)),
            scale.astype(np.float32),
        )

    def to_dense(self) -> np.ndarray:
        """The dense float32 weight (for a layer measured against, or reverted to, dense)."""
        rows, kept = self.values.shape
        columns = self.columns.astype(np.int64)
        dense = np.zeros(self.shape, dtype=np.float32)
        np.add.at(
            dense,
            (np.repeat(np.arange(rows), kept), columns.reshape(-1)),
            (self.values.astype(np.float32) * self.scale[:, None]).reshape(-1),
        )
        return dense
