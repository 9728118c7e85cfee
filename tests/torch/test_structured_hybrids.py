"""Multi-stage CNN/transformer hybrids: squeeze-and-excitation, layer scale, an FPN-style decoder
that upsamples every stage to one resolution and concatenates them, patch merging (space to
depth), shifted windows, and SegFormer (reduced key/value attention feeding such a decoder)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.torch import analyze_dependencies, prune_channels
from prunekit.torch.structured.tracing import trace_model
from tests.torch.structured_helpers import one_torch_thread, run_oracle  # noqa: F401
from tests.zoo import main_output, run


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, channels // 4, 1)
        self.expand = nn.Conv2d(channels // 4, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.expand(F.relu(self.reduce(x.mean((2, 3), keepdim=True)))))


class Stage(nn.Module):
    """Strided conv + BN + SE, then a residual conv scaled by a learned per-channel layer scale."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv, self.bn, self.se = nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), SqueezeExcite(cout)
        self.gamma = nn.Parameter(torch.full((cout, 1, 1), 0.1))
        self.mix = nn.Conv2d(cout, cout, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.se(F.relu(self.bn(self.conv(x))))
        return x + self.gamma * self.mix(x)


class ShiftedWindowMixer(nn.Module):
    """(b, h, w, c): shift by one, mix within 2x2 windows, shift back (the Swin pattern, without attention)."""

    def __init__(self, channels: int):
        super().__init__()
        self.mix = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        shifted = torch.roll(x, shifts=(-1, -1), dims=(1, 2))
        windows = shifted.view(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, 4, c)
        mixed = self.mix(windows).view(b, h // 2, w // 2, 2, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
        return x + torch.roll(mixed, shifts=(1, 1), dims=(1, 2))


class PatchMerging(nn.Module):
    """Space to depth: four neighbours' channels side by side, LayerNorm, a linear to half the width."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm, self.reduction = nn.LayerNorm(4 * channels), nn.Linear(4 * channels, 2 * channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]]
        return self.reduction(self.norm(torch.cat(parts, -1)))


class Hybrid(nn.Module):
    """Three stages; a segmentation decoder over all of them; a token branch with shifted windows and patch merging."""

    def __init__(self) -> None:
        super().__init__()
        self.s1, self.s2, self.s3 = Stage(3, 16), Stage(16, 32), Stage(32, 48)
        self.lateral = nn.ModuleList([nn.Conv2d(c, 24, 1) for c in (16, 32, 48)])
        self.fuse, self.segment = nn.Conv2d(72, 24, 1), nn.Conv2d(24, 5, 1)
        self.windows, self.merge, self.classify = ShiftedWindowMixer(48), PatchMerging(48), nn.Linear(96, 5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f1 = self.s1(x)
        f2 = self.s2(f1)
        f3 = self.s3(f2)
        ups = [
            F.interpolate(lat(f), size=f1.shape[-2:], mode="bilinear", align_corners=False)
            for lat, f in zip(self.lateral, (f1, f2, f3))
        ]
        segmentation = self.segment(F.relu(self.fuse(torch.cat(ups, 1))))
        tokens = self.merge(self.windows(f3.permute(0, 2, 3, 1)))
        return segmentation, self.classify(tokens.mean((1, 2)))


def hybrid() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return Hybrid().eval(), torch.randn(2, 3, 32, 32)


def test_hybrid_groups_couple_se_layer_scale_decoder_and_patch_merging():
    model, x = hybrid()
    graph = analyze_dependencies(model, x)
    sizes = {g.name: (g.size, g.exact) for g in graph.groups}
    assert sizes == {
        "s1.conv": (16, True), "s1.se.reduce": (4, True), "s2.conv": (32, True), "s2.se.reduce": (8, True),
        "s3.conv": (48, False),  # patch merging's LayerNorm normalises over s3's channels
        "s3.se.reduce": (12, True), "lateral.0": (24, True), "lateral.1": (24, True), "lateral.2": (24, True),
        "fuse": (24, True), "merge.reduction": (96, True),
    }  # fmt: skip
    s3 = graph.group("s3.conv")
    assert {"s3.gamma", "windows.mix.weight", "merge.norm.weight", "merge.reduction.weight"} <= {m.tensor for m in s3.members}
    merge = next(m for m in s3.members if m.tensor == "merge.reduction.weight" and m.dim == 1)
    assert merge.index.tolist() == list(range(48)) * 4  # four neighbours, each holding all 48 channels in order
    assert [e.text for e in graph.left_alone if not e.expected] == []


def test_hybrid_oracle_and_half_prune():
    model, x = hybrid()
    expected, actual, _ = run_oracle(model, x)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    result = prune_channels(model, x, 0.5)
    assert result.report.macs_ratio >= 2.5
    seg, logits = result.model(x)
    assert seg.shape == (2, 5, 16, 16) and logits.shape == (2, 5)
    assert result.model.merge.reduction.in_features == 4 * result.model.windows.mix.in_features == 4 * 24


def _segformer():
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    config = SegformerConfig(
        hidden_sizes=[8, 16, 24, 32], num_attention_heads=[1, 2, 2, 4], depths=[1, 1, 1, 1], decoder_hidden_size=32,
        num_labels=4, mlp_ratios=[2, 2, 2, 2],
    )  # fmt: skip
    torch.manual_seed(0)
    return SegformerForSemanticSegmentation(config).eval(), {"pixel_values": torch.randn(2, 3, 64, 64)}


def test_tracing_a_transformers_model_twice_gives_the_same_trace():
    pytest.importorskip("transformers")
    model, inputs = _segformer()
    first, second = trace_model(model, inputs), trace_model(model, inputs)
    assert [op.label for op in first.ops] == [op.label for op in second.ops]
    with torch.no_grad():
        assert model(**inputs).logits.shape == (2, 4, 16, 16)  # the model still runs as before


@pytest.mark.slow
def test_segformer_reduced_kv_attention_and_upsampling_decoder_prune_and_keep_outputs():
    pytest.importorskip("transformers")
    model, inputs = _segformer()
    graph = analyze_dependencies(model, inputs)
    assert sum(g.kind == "heads" for g in graph.groups) == 3  # stages with 2, 2 and 4 heads
    assert [e.text for e in graph.left_alone if not e.expected] == []
    result = prune_channels(model, inputs, 0.5)
    assert result.report.macs_ratio >= 1.6
    with torch.no_grad():
        assert main_output(run(result.model, inputs)).shape == (2, 4, 16, 16)
    expected, actual, _ = run_oracle(model, inputs)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
