"""Per-projection statistics of the calibration inputs, accumulated batch by batch.

``sq_norms[j]`` is the sum over calibration tokens of ``x_j ** 2`` (Wanda's ``||X_j||^2``);
``xxt`` is the sum of ``x x^T`` (SparseGPT's Hessian is ``2 * xxt / tokens``), whose diagonal
holds the same squared norms, so only one of the two is kept. Both are float32 whatever the
model's dtype. The squared norms are summed over the token axis as ``square(X)^T @ 1`` (one
gemv) rather than a column reduction, which walks the strided axis.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


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
    xxt: torch.Tensor | None = field(default=None, repr=False)

    def add(self, inputs: torch.Tensor) -> None:
        """Add a batch of inputs (any leading shape, last dim = ``features``)."""
        x = inputs.detach().reshape(-1, self.features).float()
        if self.hessian:  # the squared norms are its diagonal: no (tokens, features) temporary for x * x
            if self.xxt is None:
                self.xxt = torch.zeros(self.features, self.features, device=x.device)
            self.xxt.addmm_(x.t(), x)
        else:
            if self.sq_norms is None:
                self.sq_norms = torch.zeros(self.features, device=x.device)
            self.sq_norms.addmv_(x.square().t(), torch.ones(x.shape[0], device=x.device))
        self.tokens += x.shape[0]

    def input_norms(self) -> torch.Tensor:
        """``||X_j||_2`` over all calibration tokens, per input feature."""
        squares = self.xxt.diagonal() if self.xxt is not None else self.sq_norms
        if squares is None:
            raise ValueError("no calibration inputs reached this projection")
        return squares.sqrt()

    def release(self) -> None:
        """Drop the sums (their memory returns at once); the statistics cannot be read afterwards."""
        self.sq_norms = None
        self.xxt = None

    def take_hessian(self) -> torch.Tensor:
        """:meth:`hessian_matrix` made in the sums' own memory and handed over (the statistics are released)."""
        if self.xxt is None:
            raise ValueError("Hessian statistics were not collected for this projection")
        hessian = self.xxt.mul_(2.0 / max(self.tokens, 1))
        self.release()
        return hessian

    def hessian_matrix(self) -> torch.Tensor:
        """SparseGPT's layer Hessian ``H = 2 X X^T / tokens``."""
        if self.xxt is None:
            raise ValueError("Hessian statistics were not collected for this projection")
        return self.xxt * (2.0 / max(self.tokens, 1))
