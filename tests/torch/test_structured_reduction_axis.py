"""Reductions written with NumPy's ``axis=`` keyword (``torch.mean(x, axis=-1, keepdim=True)``,
as ImageGPT's layer norm does) are followed like ``dim=``, not left alone as unsupported."""

from __future__ import annotations

import torch
from torch import nn

from prunekit.torch import analyze_dependencies, prune_channels
from tests.torch.structured_helpers import one_torch_thread, run_oracle  # noqa: F401


class AxisNormPool(nn.Module):
    """linear -> RMS norm over ``axis=-1`` -> linear -> mean over tokens with ``axis=1`` -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(8, 16), nn.Linear(16, 12), nn.Linear(12, 3)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        h = h / torch.sqrt(torch.mean(torch.square(h), axis=-1, keepdim=True) + 1e-5) * self.scale
        h = torch.relu(self.fc2(h))
        return self.head(torch.mean(h, axis=1))


def _build() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return AxisNormPool().eval(), torch.randn(2, 5, 8)


def test_axis_reductions_are_followed():
    model, x = _build()
    graph = analyze_dependencies(model, x)
    assert graph.unsupported == []
    groups = {g.name: (g.size, g.exact) for g in graph.groups}
    assert groups == {"fc1": (16, False), "fc2": (12, True)}  # the norm's mean makes fc1 inexact


def test_removing_silenced_channels_behind_an_axis_mean_keeps_the_outputs():
    model, x = _build()
    expected, actual, result = run_oracle(model, x)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    assert result.model.fc2.out_features == 6


def test_half_prune_shrinks_the_normalised_width_and_its_scale():
    model, x = _build()
    result = prune_channels(model, x, 0.5)
    assert (result.model.fc1.out_features, result.model.scale.shape[0], result.model.fc2.in_features) == (8, 8, 8)
    with torch.no_grad():
        assert result.model(x).shape == (2, 3)
