"""Drop-in inference modules that run sparse weights (and sparse activations) on the CPU.

``SparseLinear`` replaces an ``nn.Linear``; ``SparseConv2d`` replaces an ``nn.Conv2d`` (a 1x1
convolution is a Linear over pixels; others run through im2col); ``ActivationSparseLinear``
zeroes the small entries of its input (a calibrated threshold) and reads only the weight
columns of the entries that survive. All take float32 inputs of any leading shape, run in
inference only (no autograd), and keep ``in_features``/``out_features`` like the layer they replace.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.errors import ConfigError
from prunekit.torch.deploy.sparse import kernels
from prunekit.torch.deploy.sparse.formats import BSR, CSR, Layout, NMPacked


class SparseLinear(nn.Module):
    """``y = x @ W.T + b`` with ``W`` held in a sparse layout (CSR, BSR, N:M packed; int8 optional).

    Example::

        layer = SparseLinear.from_linear(pruned_linear, detect_layout(pruned_linear.weight.numpy()))
        torch.testing.assert_close(layer(x), pruned_linear(x))
    """

    def __init__(self, weight: CSR | BSR | NMPacked, bias: torch.Tensor | None, layout: Layout) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight_data = weight
        self.layout = layout
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, layout: Layout) -> SparseLinear:
        """Pack ``linear.weight`` in ``layout`` (its zeros are left out)."""
        return cls(pack(linear.weight.detach().float().cpu().numpy(), layout), linear.bias, layout)

    @property
    def nnz(self) -> int:
        data = self.weight_data
        return int(data.blocks.size if isinstance(data, BSR) else data.values.size)

    def matmul(self, x2: torch.Tensor) -> torch.Tensor:
        """``x2 @ W.T + bias`` for a 2-D float32 ``x2`` (tokens, in_features); the kernels add the bias."""
        data = self.weight_data
        bias = None if self.bias is None else self.bias.detach().numpy()
        if isinstance(data, CSR):
            return kernels.csr_matmul(x2, data.indptr, data.indices, data.values, data.scale, self.out_features, bias)
        if isinstance(data, BSR):
            return kernels.bsr_matmul(x2, data.indptr, data.indices, data.blocks, self.out_features, bias)
        return kernels.nm_matmul(x2, data.values, data.columns, data.scale, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ConfigError(f"SparseLinear expects inputs with {self.in_features} features, got shape {list(x.shape)}")
        x2 = x.reshape(-1, self.in_features)
        y = self.matmul(x2 if x2.dtype == torch.float32 else x2.float())
        y = y.reshape(*x.shape[:-1], self.out_features)
        return y if x.dtype == torch.float32 else y.to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, layout={self.layout.describe()}, nnz={self.nnz}"
        )


def pack(weight: np.ndarray, layout: Layout) -> CSR | BSR | NMPacked:
    """A 2-D float weight in ``layout``."""
    if layout.kind == "nm":
        return NMPacked.from_dense(weight, layout.block[0], layout.block[1], layout.int8)
    if layout.kind == "bsr":
        return BSR.from_dense(weight, layout.block)
    if layout.kind == "csr":
        return CSR.from_dense(weight, layout.int8)
    raise ConfigError(f"layout kind should be csr, bsr or nm, got {layout.kind!r}")


class SparseConv2d(nn.Module):
    """An ``nn.Conv2d`` (groups=1) run as a sparse matmul: per pixel for 1x1, over im2col patches otherwise.

    Example::

        sparse = SparseConv2d.from_conv(pruned_conv, Layout("csr"))
    """

    def __init__(self, conv: nn.Conv2d, linear: SparseLinear) -> None:
        super().__init__()
        self.kernel_size = conv.kernel_size
        self.stride = conv.stride
        self.padding = conv.padding
        self.dilation = conv.dilation
        self.in_channels = conv.in_channels
        self.out_channels = conv.out_channels
        self.linear = linear
        if isinstance(self.padding, str):
            raise ConfigError("SparseConv2d needs numeric padding; padding='same'/'valid' layers stay dense")

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, layout: Layout) -> SparseConv2d:
        """Pack ``conv.weight`` reshaped to (out, in * kh * kw) in ``layout``."""
        if conv.groups != 1:
            raise ConfigError(f"SparseConv2d supports groups=1 only, got groups={conv.groups}")
        weight = conv.weight.detach().float().cpu().numpy().reshape(conv.out_channels, -1)
        return cls(conv, SparseLinear(pack(weight, layout), conv.bias, layout))

    @property
    def pointwise(self) -> bool:
        return tuple(self.kernel_size) == (1, 1) and tuple(self.stride) == (1, 1) and tuple(self.padding) == (0, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        if self.pointwise:
            y = self.linear(x.permute(0, 2, 3, 1))
            return y.permute(0, 3, 1, 2)
        patches = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # (B, C*kh*kw, L)
        y = self.linear(patches.transpose(1, 2))  # (B, L, out)
        out_h = (height + 2 * self.padding[0] - self.dilation[0] * (self.kernel_size[0] - 1) - 1) // self.stride[0] + 1
        out_w = (width + 2 * self.padding[1] - self.dilation[1] * (self.kernel_size[1] - 1) - 1) // self.stride[1] + 1
        return y.transpose(1, 2).reshape(batch, self.out_channels, out_h, out_w)


def column_norms(weight: np.ndarray) -> np.ndarray:
    """``||W[:, j]||_2`` per input ``j`` of a 2-D (out, in) weight, float32: how much input ``j`` can move the output."""
    return np.sqrt(np.square(weight.astype(np.float64)).sum(axis=0)).astype(np.float32)


class ActivationSparseLinear(nn.Module):
    """A Linear whose input entries with ``|x| < threshold`` are zeroed (TEAL-style), reading only the weight
    columns of the surviving entries. The weight may itself be sparse (CSC). Counts the zeros it made.

    With an ``input_scale`` ``s`` (WINA / R-Sparse: the weight's column norms), the score of input
    ``j`` is ``|x_j| * s_j``: the layer holds ``W[:, j] / s_j`` and multiplies its input by ``s``, so
    the kernels compare ``|x_j * s_j|`` with the threshold and the product is unchanged.

    Example::

        layer = ActivationSparseLinear.from_linear(linear, threshold=0.12)
        layer(x); layer.achieved_sparsity   # fraction of input entries zeroed so far
    """

    def __init__(
        self,
        weight: np.ndarray | CSR,
        bias: torch.Tensor | None,
        threshold: float,
        max_tokens: int = 4,
        input_scale: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        self.threshold = float(threshold)
        self.max_tokens = max_tokens
        self.input_scale = None if input_scale is None else torch.from_numpy(np.asarray(input_scale, dtype=np.float32))
        if isinstance(weight, CSR):
            self.out_features, self.in_features = weight.shape
            self.csr: CSR | None = weight
            self.csc: CSR | None = weight.to_csc()
            self.weight_t: np.ndarray | None = None
        else:
            self.out_features, self.in_features = weight.shape
            self.csr = self.csc = None
            self.weight_t = np.ascontiguousarray(weight.T, dtype=np.float32)
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone(), requires_grad=False)
        self.zeroed = 0
        self.seen = 0

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        threshold: float,
        weight_sparse: bool = False,
        column_norm_scores: bool = False,
        output_scale: float = 1.0,
    ) -> ActivationSparseLinear:
        """Wrap ``linear``; ``weight_sparse`` also skips the weight's own zeros (CSC of the nonzeros);
        ``column_norm_scores`` scores input ``j`` by ``|x_j| * ||W[:, j]||`` instead of ``|x_j|``;
        ``output_scale`` multiplies ``W x`` (not the bias), folded into the weight after the scores are fixed."""
        weight = linear.weight.detach().float().cpu().numpy()
        scale = None
        if column_norm_scores:
            scale = column_norms(weight)
            weight = weight / np.where(scale > 0, scale, 1.0)[None, :]  # an all-zero column stays zero
        if output_scale != 1.0:
            weight = weight * np.float32(output_scale)
        return cls(CSR.from_dense(weight) if weight_sparse else weight, linear.bias, threshold, input_scale=scale)

    @property
    def achieved_sparsity(self) -> float:
        """Fraction of input entries zeroed since the last :meth:`reset_counts`."""
        return self.zeroed / self.seen if self.seen else 0.0

    def reset_counts(self) -> None:
        self.zeroed = 0
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ConfigError(
                f"ActivationSparseLinear expects inputs with {self.in_features} features, got shape {list(x.shape)}"
            )
        x2 = x.reshape(-1, self.in_features)
        x2 = (x2 if x2.dtype == torch.float32 else x2.float()).detach()
        bias = None if self.bias is None else self.bias.detach().numpy()
        self.seen += x2.numel()
        if x2.shape[0] <= self.max_tokens and self.csc is None:
            # decoding: the kernel scales, selects and counts the surviving inputs itself
            assert self.weight_t is not None
            scale = None if self.input_scale is None else self.input_scale.numpy()
            y, survived = kernels.dense_skip_matmul(x2, self.weight_t, self.threshold, bias, scale)
            self.zeroed += x2.numel() - survived
        else:
            y = self._matmul_thresholded(x2, bias)
        y = y.reshape(*x.shape[:-1], self.out_features)
        return y if x.dtype == torch.float32 else y.to(x.dtype)

    def _matmul_thresholded(self, x2: torch.Tensor, bias: np.ndarray | None) -> torch.Tensor:
        """The CSC kernel (a sparse weight), or past ``max_tokens`` (prefill, where the union of active columns is
        nearly all of them) plain matmuls over the thresholded input; counts the zeroed entries."""
        if self.input_scale is not None:
            x2 = x2 * self.input_scale
        self.zeroed += int((x2.abs() < self.threshold).sum()) if self.threshold > 0 else int((x2 == 0).sum())
        if x2.shape[0] <= self.max_tokens:
            csc = self.csc
            assert csc is not None
            return kernels.csc_skip_matmul(x2, csc.indptr, csc.indices, csc.values, csc.scale, self.threshold, bias)
        x2 = torch.where(x2.abs() < self.threshold, torch.zeros((), dtype=x2.dtype), x2)
        if self.csr is not None:
            data = self.csr
            return kernels.csr_matmul(x2, data.indptr, data.indices, data.values, data.scale, self.out_features, bias)
        assert self.weight_t is not None
        weight_t = torch.from_numpy(self.weight_t)
        return torch.addmm(self.bias, x2, weight_t) if self.bias is not None else x2 @ weight_t

    def extra_repr(self) -> str:
        kind = "sparse" if self.csc is not None else "dense"
        score = "|x|*||W col||" if self.input_scale is not None else "|x|"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, threshold={self.threshold:.4g}, "
            f"score={score}, weight={kind}"
        )
