"""Two custom layers built on fused custom ops the analysis has no rule for, and their channel rules.

``TimeNorm`` normalises each channel over time (a fused op); ``GatedLinear`` is one fused
projection to ``2 * hidden`` rows followed by a GLU (rows ``i`` and ``hidden + i`` make output
channel ``i``). Both read a size attribute in ``forward``, so ``shrink`` must update it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.torch.structured.rules import ChannelRule, Coupling, Shrink


@torch.library.custom_op("prunekit_tests::time_norm", mutates_args=())
def time_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    var, mean = torch.var_mean(x, dim=1, keepdim=True, correction=0)
    return (x - mean) / torch.sqrt(var + 1e-5) * weight + bias


@time_norm.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("prunekit_tests::gated_linear", mutates_args=())
def gated_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return F.glu(F.linear(x, weight, bias), dim=-1)


@gated_linear.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0] // 2))


class TimeNorm(nn.Module):
    """Per-channel normalisation over the time axis of (batch, time, features), with an affine."""

    def __init__(self, features: int):
        super().__init__()
        self.features = features
        self.weight = nn.Parameter(torch.rand(features) + 0.5)
        self.bias = nn.Parameter(torch.randn(features) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.features:
            raise ValueError(f"TimeNorm expected {self.features} features, got {x.shape[-1]}")
        return time_norm(x, self.weight, self.bias)


class GatedLinear(nn.Module):
    """``glu(x @ W.T + b)`` with W of shape (2 * hidden, in_features), as one fused op."""

    def __init__(self, in_features: int, hidden: int):
        super().__init__()
        self.in_features, self.hidden = in_features, hidden
        self.weight = nn.Parameter(torch.randn(2 * hidden, in_features) / in_features**0.5)
        self.bias = nn.Parameter(torch.randn(2 * hidden) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = gated_linear(x, self.weight, self.bias)
        return out.reshape(*x.shape[:-1], self.hidden)


class TimeNormRule(ChannelRule):
    """Each channel is normalised on its own: input, affine and output channels are the same."""

    def couple(self, module: nn.Module, ctx: Coupling) -> None:
        x = ctx.input(0)
        ctx.tie(x[-1], ctx.tensor("weight")[0])
        ctx.tie(x[-1], ctx.tensor("bias")[0])
        ctx.pass_through(0, 0)

    def shrink(self, module: nn.Module, ctx: Shrink) -> dict[str, int]:
        return {"features": ctx.shape("weight")[0]}


class GatedLinearRule(ChannelRule):
    """Weight columns read the input; rows ``i`` and ``hidden + i`` (and their biases) make channel ``i``."""

    def couple(self, module: nn.Module, ctx: Coupling) -> None:
        x = ctx.input(0)
        ctx.tie(x[-1], ctx.consume("weight", 1))
        rows = ctx.produce("weight", 0)
        half = len(rows) // 2
        ctx.tie(rows[:half], rows[half:])
        ctx.tie(ctx.tensor("bias")[0], rows)
        ctx.set_output(0, [*x[:-1], rows[:half]])

    def shrink(self, module: nn.Module, ctx: Shrink) -> dict[str, int]:
        rows, columns = ctx.shape("weight")
        return {"hidden": rows // 2, "in_features": columns}


RULES = {TimeNorm: TimeNormRule(), GatedLinear: GatedLinearRule()}


class CustomNet(nn.Module):
    """(batch, time, 6) -> Linear(16) -> TimeNorm -> relu -> GatedLinear(12) -> Linear(3)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.norm = TimeNorm(16)
        self.glu = GatedLinear(16, 12)
        self.out = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.glu(torch.relu(self.norm(self.inp(x)))))
