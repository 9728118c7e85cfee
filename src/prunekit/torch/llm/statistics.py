"""Per-projection statistics of the calibration inputs, accumulated batch by batch.

``sq_norms[j]`` is the sum over calibration tokens of ``x_j ** 2`` (Wanda's ``||X_j||^2``);
``xxt`` is the sum of ``x x^T`` (SparseGPT's Hessian is ``2 * xxt / tokens``). Both are kept
in float32 whatever the model's dtype. The squared norms are summed over the token axis as
``square(X)^T @ 1`` (one gemv) rather than a column reduction, which walks the strided axis.
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
        if self.sq_norms is None:
            self.sq_norms = torch.zeros(self.features, device=x.device)
        self.sq_norms.addmv_(x.square().t(), torch.ones(x.shape[0], device=x.device))
        if self.hessian:
            if self.xxt is None:
                self.xxt = torch.zeros(self.features, self.features, device=x.device)
            self.xxt.addmm_(x.t(), x)
        self.tokens += x.shape[0]

    def input_norms(self) -> torch.Tensor:
        """``||X_j||_2`` over all calibration tokens, per input feature."""
        if self.sq_norms is None:
            raise ValueError("no calibration inputs reached this projection")
        return self.sq_norms.sqrt()

    def hessian_matrix(self) -> torch.Tensor:
        """SparseGPT's layer Hessian ``H = 2 X X^T / tokens``."""
        if self.xxt is None:
            raise ValueError("Hessian statistics were not collected for this projection")
        return self.xxt * (2.0 / max(self.tokens, 1))
