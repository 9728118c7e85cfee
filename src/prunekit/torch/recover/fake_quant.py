"""The int8 fake-quant arithmetic of PyTorch QAT: weight codes and scales, activation fake quantization, observed ranges.

Training (:mod:`prunekit.torch.recover.qat`) and the ONNX export (:mod:`prunekit.torch.recover.qdq`) both
compute with these functions, so the int8 file holds exactly the arithmetic the model trained with.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

QUANTIZABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
"""Layer types QAT fake-quantizes: weight of shape ``(out_channels, ...)`` read as ``self.weight`` in forward."""

WEIGHT_QMAX = 127
ACT_QMIN, ACT_QMAX = 0, 255
BIAS_INT32_LIMIT = 2**30
"""Largest int32 code a bias may get: ONNX Runtime's int8 kernels (``QLinearConv``, ``QGemm``) store the bias
as ``round(bias / (input_scale * weight_scale))`` in int32 and add the accumulator to it; half the int32 range
leaves the other half for the accumulator (``255 * 127 * fan_in`` fits for ``fan_in`` < 33,000)."""


def _act_qparams(low: float, high: float) -> tuple[float, int]:
    """uint8 affine scale and zero point of a range (widened to include 0), as float32 like ONNX stores it."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = float(np.float32(max((high - low) / (ACT_QMAX - ACT_QMIN), 1e-8)))
    zero_point = int(min(max(round(-low / scale), ACT_QMIN), ACT_QMAX))
    return scale, zero_point


def _fake_quant_activation(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """``(clamp(round(x / s) + z, 0, 255) - z) * s`` with a straight-through gradient inside the range."""
    scaled = torch.round(x / scale) + zero_point
    quantized = (scaled.clamp(ACT_QMIN, ACT_QMAX) - zero_point) * scale
    inside = ((scaled >= ACT_QMIN) & (scaled <= ACT_QMAX)).to(x.dtype)
    return x * inside + (quantized - x * inside).detach()


def weight_codes(
    weight: torch.Tensor, mask: torch.Tensor | None = None, min_scales: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 codes (as a float tensor) and per-channel scales of ``weight`` (symmetric, axis 0).

    With a ``mask`` (True = kept), pruned weights get code 0 and kept weights never do (a kept
    weight that would round to 0 gets +-1), so the codes' zeros are exactly the mask's.
    ``min_scales`` (one per output channel) is a floor under the scales: see :func:`bias_scale_floor`.

    Example::

        codes, scales = weight_codes(layer.weight)   # codes in [-127, 127], scales of shape (out,)
    """
    w = weight.detach().float()
    if mask is not None:
        w = w * mask
    channels = w.shape[0]
    scales = (w.abs().reshape(channels, -1).amax(dim=1) / WEIGHT_QMAX).clamp_min(1e-12)
    if min_scales is not None:
        scales = torch.maximum(scales, min_scales.detach().float().to(scales.device))
    view = (channels,) + (1,) * (w.dim() - 1)
    codes = torch.round(w / scales.view(view)).clamp(-WEIGHT_QMAX, WEIGHT_QMAX)
    if mask is not None:
        away_from_zero = torch.where(w >= 0, torch.ones_like(codes), -torch.ones_like(codes))
        codes = torch.where(mask & (codes == 0), away_from_zero, codes) * mask
    return codes, scales


def bias_scale_floor(module: nn.Module, input_scale: float) -> torch.Tensor | None:
    """Smallest per-channel weight scales that keep ``module``'s bias representable in int32 (None: no bias).

    ONNX Runtime's int8 kernels quantize the bias with scale ``input_scale * weight_scale``. A
    channel whose weights are all zero (fully pruned) or tiny would get a weight scale so small that
    its bias overflows int32 and is clipped to almost nothing, so the int8 model loses that bias
    while the fake-quant model keeps it. Raising such a channel's weight scale to
    ``|bias| / (input_scale * BIAS_INT32_LIMIT)`` keeps the bias; training and export both use it.

    Example::

        floor = bias_scale_floor(conv, input_scale=1 / 255)   # shape (out_channels,)
    """
    bias = module._parameters.get("bias")
    if bias is None:
        return None
    return bias.detach().float().abs() / (float(np.float32(input_scale)) * BIAS_INT32_LIMIT)


def _weight(module: nn.Module) -> torch.Tensor:
    """The module's own ``weight`` parameter (not the per-call fake-quant shadow)."""
    weight = module._parameters["weight"]
    assert weight is not None
    return weight


def _fake_quant_weight(weight: torch.Tensor, mask: torch.Tensor | None, min_scales: torch.Tensor | None) -> torch.Tensor:
    codes, scales = weight_codes(weight, mask, min_scales)
    effective = weight * mask if mask is not None else weight
    dequantized = (codes * scales.view((-1,) + (1,) * (weight.dim() - 1))).to(weight.dtype)
    return effective + (dequantized - effective).detach()


@dataclass
class ObservedRange:
    """An observed activation range (EMA of batch min/max once initialised)."""

    low: float = 0.0
    high: float = 0.0
    seen: bool = False

    def observe(self, x: torch.Tensor, momentum: float) -> None:
        low, high = float(x.detach().min()), float(x.detach().max())
        if not self.seen:
            self.low, self.high, self.seen = low, high, True
        else:
            self.low += momentum * (low - self.low)
            self.high += momentum * (high - self.high)

    def qparams(self) -> tuple[float, int]:
        return _act_qparams(self.low, self.high)


@dataclass
class LayerState:
    """One fake-quantized layer: its name, module, PQAT mask (True = kept) and observed input/output ranges."""

    name: str
    module: nn.Module
    mask: torch.Tensor | None
    input_range: ObservedRange = field(default_factory=ObservedRange)
    output_range: ObservedRange = field(default_factory=ObservedRange)
