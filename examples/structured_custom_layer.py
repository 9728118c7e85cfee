"""Structured pruning through a custom layer: tell prunekit how its channels couple with a rule.

``ScaledGELU`` multiplies each channel by a learned scale and applies GELU in one fused custom op,
which the analysis cannot see into: without a rule, the channels flowing through it are kept
(and the report names the module and the hook). A four-line ``ChannelRule`` says "the input
channels are the scale's channels and pass straight through", and the conv feeding it loses half
its filters like any other layer. The plan records the attribute the rule updates, so
``load_pruned`` rebuilds the pruned model without the rule.

Run: python examples/structured_custom_layer.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.torch import analyze_dependencies, load_pruned, prune_channels, save_pruned
from prunekit.torch.structured.rules import ChannelRule, Coupling, Shrink


@torch.library.custom_op("prunekit_examples::scaled_gelu", mutates_args=())
def scaled_gelu(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """gelu(x * scale) over channel dimension 1, as one op (a stand-in for a fused kernel)."""
    return F.gelu(x * scale.view(1, -1, *([1] * (x.dim() - 2))))


@scaled_gelu.register_fake
def _(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class ScaledGELU(nn.Module):
    """A per-channel learned scale and a GELU, fused."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.scale = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return scaled_gelu(x, self.scale)


class ScaledGELURule(ChannelRule):
    """Input channel c is the scale's entry c and output channel c; ``channels`` follows the scale."""

    def couple(self, module: nn.Module, ctx: Coupling) -> None:
        ctx.tie(ctx.input(0)[1], ctx.tensor("scale")[0])
        ctx.pass_through(0, 0)

    def shrink(self, module: nn.Module, ctx: Shrink) -> dict[str, int]:
        return {"channels": ctx.shape("scale")[0]}


class KeywordSpotter(nn.Module):
    """A small 1-D conv net over (batch, 16 features, 50 frames) with the fused activation."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(16, 64, 5, padding=2)
        self.act1 = ScaledGELU(64)
        self.conv2 = nn.Conv1d(64, 64, 5, padding=2)
        self.act2 = ScaledGELU(64)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act2(self.conv2(self.act1(self.conv1(x)))).mean(-1))


def main(verbose: bool = True) -> dict:
    """Prune half the channels with and without the rule; returns the measured numbers."""
    torch.manual_seed(0)
    model = KeywordSpotter().eval()
    x = torch.randn(8, 16, 50)
    rules = {ScaledGELU: ScaledGELURule()}

    without = analyze_dependencies(model, x)
    result = prune_channels(model, x, 0.5, rules=rules)
    pruned = result.model
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "spotter.safetensors"
        save_pruned(result, path)
        reloaded = load_pruned(path, KeywordSpotter)
    with torch.no_grad():
        same = bool(torch.equal(reloaded(x), pruned(x)))
    numbers = {
        "groups_without_rule": len(without.groups),
        "unpruned_without_rule": [label for label, _ in without.unsupported],
        "channels_after": (pruned.conv1.out_channels, pruned.act1.channels, pruned.conv2.out_channels),
        "macs_ratio": result.report.macs_ratio,
        "reloaded_equal": same,
    }
    if verbose:
        print(f"without the rule: {numbers['groups_without_rule']} prunable groups; left unpruned: {without.unsupported[0][1]}")
        print(f"with the rule: conv1/act1/conv2 channels 64 -> {numbers['channels_after']}")
        print(f"MACs {result.report.macs_ratio:.2f}x fewer; reloaded without the rule gives equal outputs: {same}")
    return numbers


if __name__ == "__main__":
    main()
