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
    nonzero = weight != 0
    rows, cols = weight.shape
    nnz = int(nonzero.sum())
    for n, m in NM_PATTERNS:
        # an N:M pack stores N of every M: worth it only when the weight really is (nearly) that dense
        if (
            cols % m == 0
            and nnz >= 0.9 * weight.size * n / m
            and nonzero.reshape(rows, cols // m, m).sum(axis=2).max(initial=0) <= n
        ):
            return Layout("nm", (n, m), int8)
    for bh, bw in BLOCK_SHAPES:
        if rows % bh or cols % bw or nnz == 0:
            continue
        blocks = nonzero.reshape(rows // bh, bh, cols // bw, bw).any(axis=(1, 3))
        if blocks.sum() * bh * bw <= 1.25 * nnz:
            return Layout("bsr", (bh, bw), False)
    return Layout("csr", (1, 1), int8)


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
        bh, bw = block
        rows, cols = weight.shape
        if rows % bh or cols % bw:
            raise ConfigError(f"block {bh}x{bw} does not tile a weight of shape {list(weight.shape)}")
        tiled = weight.reshape(rows // bh, bh, cols // bw, bw).transpose(0, 2, 1, 3)
        keep = (tiled != 0).any(axis=(2, 3))
        block_rows, block_cols = np.nonzero(keep)
        indptr = np.zeros(rows // bh + 1, dtype=np.int64)
        np.cumsum(keep.sum(axis=1), out=indptr[1:])
        blocks = np.ascontiguousarray(tiled[block_rows, block_cols], dtype=np.float32)
        return cls((rows, cols), indptr, block_cols.astype(np.int32), blocks)


@dataclass
class NMPacked:
    """N:M packing: ``values`` (rows, cols / M * N), ``slots`` (uint8 position in the group), int8 optional."""

    shape: tuple[int, int]
    n: int
    m: int
    values: np.ndarray
    slots: np.ndarray
    scale: np.ndarray

    @classmethod
    def from_dense(cls, weight: np.ndarray, n: int, m: int, int8: bool = False) -> NMPacked:
        """Pack a weight with at most ``n`` nonzeros in each group of ``m`` inputs (zeros fill short groups)."""
        rows, cols = weight.shape
        if cols % m:
            raise ConfigError(f"{n}:{m} packing needs the input size ({cols}) to be a multiple of {m}")
        groups = weight.reshape(rows, cols // m, m)
        if (groups != 0).sum(axis=2).max(initial=0) > n:
            raise ConfigError(f"the weight is not {n}:{m} sparse: some group of {m} inputs holds more than {n} nonzeros")
        # the n largest |w| of each group, in ascending slot order: zeros fill groups with fewer nonzeros
        slots = np.sort(np.argsort(-np.abs(groups), axis=2, kind="stable")[:, :, :n], axis=2)
        values = np.take_along_axis(groups, slots, axis=2).reshape(rows, -1)
        scale = int8_scales(weight) if int8 else None
        if scale is None:
            stored, scale = values.astype(np.float32), np.ones(rows, dtype=np.float32)
        else:
            stored = np.rint(values / scale[:, None]).astype(np.int8)
        return cls((rows, cols), n, m, np.ascontiguousarray(stored), slots.reshape(rows, -1).astype(np.uint8), scale)
