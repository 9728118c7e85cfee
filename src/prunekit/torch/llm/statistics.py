"""Per-projection statistics of the calibration inputs, accumulated batch by batch.

``sq_norms[j]`` is the sum over calibration tokens of ``x_j ** 2`` (Wanda's ``||X_j||^2``);
``xxt`` is the sum of ``x x^T`` (SparseGPT's Hessian is ``2 * xxt / tokens``), whose diagonal
holds the same squared norms, so only one of the two is kept. Both are float32 whatever the
model's dtype. The squared norms are summed over the token axis as ``square(X)^T @ 1`` (a gemv)
rather than a column reduction, which walks the strided axis, a few hundred KiB of rows at a time
through one reused buffer (a fresh token x feature square cost more in page faults than in arithmetic).

``x x^T`` is symmetric, so for inputs wider than ``2 * BLOCK`` only its blocks on and above the
diagonal are summed (``BLOCK`` columns each): 21 blocks of 512 x 512 hold 21 MiB where the whole
3072 x 3072 of an MLP down projection holds 36 MiB, for 58 % of the multiply-adds. They stay
alive through a block's whole statistics pass, at the peak of a SparseGPT run; the whole matrix is
assembled only when a projection is pruned.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from prunekit.torch.llm.threads import one_thread

BLOCK = 512
# Squared norms are summed this many bytes of input rows at a time: a buffer under glibc's 1 MiB mmap
# threshold (prunekit.core.allocator) is reused from the heap, where a whole-batch square(x) was a fresh
# mapping whose page faults took 20 of the 21 ms per 1024 x 3072 input (one thread, 2026-12-08).
SQUARE_CHUNK_BYTES = 512 * 1024


def column_ranges(features: int) -> list[slice]:
    """The column ranges the sum of ``x x^T`` is kept in: one when ``features <= 2 * BLOCK``, else ``BLOCK`` each."""
    if features <= 2 * BLOCK:
        return [slice(0, features)]
    return [slice(start, min(start + BLOCK, features)) for start in range(0, features, BLOCK)]


def statistics_bytes(features: int, hessian: bool) -> int:
    """Bytes :class:`InputStatistics` allocates for one projection: its upper ``x x^T`` blocks, or its squared norms.

    Example::

        statistics_bytes(3072, hessian=True)  # 21 blocks of 512 x 512 float32: 22020096
    """
    if not hessian:
        return features * 4
    sides = [r.stop - r.start for r in column_ranges(features)]
    return sum(sides[i] * sides[j] * 4 for i in range(len(sides)) for j in range(i, len(sides)))


@dataclass
class InputStatistics:
    """Running sums over the calibration tokens that reach one projection.

    Example::

        stats = InputStatistics(features=4, hessian=True)
        stats.add(torch.randn(2, 8, 4))
        stats.tokens  # 16
    """

    features: int
    hessian: bool = False
    tokens: int = 0
    sq_norms: torch.Tensor | None = None
    # the blocks (i, j), j >= i, of the sum of x x^T over BLOCK-column ranges; one (0, 0) block when narrow
    upper: dict[tuple[int, int], torch.Tensor] | None = field(default=None, repr=False)

    def _ranges(self) -> list[slice]:
        return column_ranges(self.features)

    def add(self, inputs: torch.Tensor) -> None:
        """Add a batch of inputs (any leading shape, last dim = ``features``)."""
        x = inputs.detach().reshape(-1, self.features).float()
        if self.hessian:  # the squared norms are its diagonal: no (tokens, features) temporary for x * x
            ranges = self._ranges()
            if self.upper is None:
                self.upper = {
                    (i, j): torch.zeros(a.stop - a.start, b.stop - b.start, device=x.device)
                    for i, a in enumerate(ranges)
                    for j, b in enumerate(ranges)
                    if j >= i
                }
            for (i, j), block in self.upper.items():
                block.addmm_(x[:, ranges[i]].t(), x[:, ranges[j]])
        else:
            self._add_squares(x)
        self.tokens += x.shape[0]

    def _add_squares(self, x: torch.Tensor) -> None:
        """Add ``square(x)^T @ 1`` to the squared norms; on CPU ``SQUARE_CHUNK_BYTES`` of rows at a time through
        one reused buffer, on one thread (the gemv adds the rows one after another, so the chunks change no bit
        on the CPU BLAS measured here)."""
        norms = self.sq_norms if self.sq_norms is not None else torch.zeros(self.features, device=x.device)
        self.sq_norms = norms
        if x.device.type != "cpu":
            norms.addmv_(x.square().t(), torch.ones(x.shape[0], device=x.device))
            return
        rows = min(x.shape[0], max(1, SQUARE_CHUNK_BYTES // (4 * self.features)))
        buffer, ones = torch.empty(rows, self.features), torch.ones(rows)
        with one_thread():
            for start in range(0, x.shape[0], rows):
                part = x[start : start + rows]
                norms.addmv_(torch.square(part, out=buffer[: part.shape[0]]).t(), ones[: part.shape[0]])

    @property
    def xxt(self) -> torch.Tensor | None:
        """The sum of ``x x^T`` as one matrix (``None`` when not collected); for wide inputs a fresh tensor,
        assembled from the blocks."""
        return None if self.upper is None else self._whole(self.upper)

    def _whole(self, upper: dict[tuple[int, int], torch.Tensor], consume: bool = False) -> torch.Tensor:
        """The blocks as one symmetric matrix (the one block itself when narrow); ``consume`` drops each block
        from ``upper`` once it is copied."""
        if len(upper) == 1:
            return upper.pop((0, 0)) if consume else upper[(0, 0)]
        ranges = self._ranges()
        whole = torch.empty(self.features, self.features, device=upper[(0, 0)].device)
        for i, j in list(upper):
            block = upper.pop((i, j)) if consume else upper[(i, j)]
            whole[ranges[i], ranges[j]] = block
            if i != j:
                whole[ranges[j], ranges[i]] = block.t()
            del block
        return whole

    def input_norms(self) -> torch.Tensor:
        """``||X_j||_2`` over all calibration tokens, per input feature."""
        if self.upper is not None:
            squares = torch.cat([self.upper[(i, i)].diagonal() for i in range(len(self._ranges()))])
        else:
            squares = self.sq_norms
        if squares is None:
            raise ValueError("no calibration inputs reached this projection")
        return squares.sqrt()

    def release(self) -> None:
        """Drop the sums (their memory returns at once); the statistics cannot be read afterwards."""
        self.sq_norms = None
        self.upper = None

    def take_hessian(self) -> torch.Tensor:
        """:meth:`hessian_matrix` handed over, the statistics released: made in the sums' own memory when they
        are one block, else assembled with each block freed as soon as it is copied."""
        if self.upper is None:
            raise ValueError("Hessian statistics were not collected for this projection")
        upper, self.upper = self.upper, None
        self.sq_norms = None
        return self._whole(upper, consume=True).mul_(2.0 / max(self.tokens, 1))

    def hessian_matrix(self) -> torch.Tensor:
        """SparseGPT's layer Hessian ``H = 2 X X^T / tokens``."""
        if self.upper is None:
            raise ValueError("Hessian statistics were not collected for this projection")
        scale = 2.0 / max(self.tokens, 1)
        return self._whole(self.upper) * scale if len(self.upper) == 1 else self._whole(self.upper).mul_(scale)
