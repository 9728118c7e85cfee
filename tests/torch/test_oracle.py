"""The oracle over the zoo: silenced channels, once removed, leave every output unchanged; and
every zoo model pruned at 50% runs, keeps its output shape, shrinks as reported, exports to ONNX
and round-trips through save_pruned/load_pruned."""

from __future__ import annotations

import pytest
import torch

from prunekit.torch import count_macs, count_params, load_pruned, prune_channels, save_pruned
from tests.assertions import assert_same_outputs
from tests.legacy_onnx import export_legacy_onnx
from tests.torch.structured_helpers import one_torch_thread, run_oracle  # noqa: F401  (one_torch_thread: autouse)
from tests.zoo import ZOO, main_output, run

NAMES = sorted(ZOO)
#: Zoo models whose attention heads form exact groups (no normalisation over the head channels),
#: so the oracle must remove heads there too.
EXACT_HEADS = {"hf_bert", "hf_gpt2", "hf_llama_gqa", "hf_vit"}


@pytest.mark.parametrize("name", NAMES)
def test_removing_silenced_channels_leaves_outputs_unchanged(name):
    model, inputs = ZOO[name]()
    expected, actual, result = run_oracle(model, inputs, fraction=0.5, seed=0)
    assert result.removed, f"{name}: no exact group to prune"
    assert result.report.params_after < result.report.params_before
    if name in EXACT_HEADS:
        heads = [g for g in result.report.groups if g.kind == "heads"]
        assert heads and all(g.channels_after < g.channels_before for g in heads)
    assert_same_outputs(actual, expected, atol=1e-5, rtol=1e-5)


class _MainOutput(torch.nn.Module):
    """Calls a zoo model with named tensors and returns its main output (ONNX wants tensors)."""

    def __init__(self, model: torch.nn.Module, names: list[str] | None):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *tensors):
        inputs = dict(zip(self.names, tensors)) if self.names else tensors
        return main_output(run(self.model, inputs))


def _onnx_output(model: torch.nn.Module, inputs, path):
    import onnxruntime as ort

    if getattr(model, "config", None) is not None:
        model.config.use_cache = False
    names = list(inputs) if isinstance(inputs, dict) else None
    tensors = tuple(inputs.values()) if names else (inputs if isinstance(inputs, tuple) else (inputs,))
    input_names = [f"input_{i}" for i in range(len(tensors))]
    export_legacy_onnx(_MainOutput(model, names), tensors, path, input_names=input_names)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    return session.run(None, {n: t.numpy() for n, t in zip(input_names, tensors) if n in wanted})[0]


@pytest.mark.parametrize("name", NAMES)
def test_half_ratio_shrinks_as_reported_exports_and_round_trips(name, tmp_path):
    model, inputs = ZOO[name]()
    with torch.no_grad():
        reference = main_output(run(model, inputs))
    result = prune_channels(model, inputs, 0.5)
    pruned = result.model.eval()
    with torch.no_grad():
        output = main_output(run(pruned, inputs))
    assert output.shape == reference.shape
    report = result.report
    assert report.params_after == count_params(pruned) < report.params_before == count_params(model)
    assert report.macs_after == count_macs(pruned, inputs).total < report.macs_before
    assert report.macs_ratio > 1.8, f"{name}: MACs only fell {report.macs_ratio:.2f}x"

    save_pruned(result, tmp_path / f"{name}.safetensors")
    loaded = load_pruned(tmp_path / f"{name}.safetensors", lambda: ZOO[name]()[0]).eval()
    with torch.no_grad():
        assert_same_outputs(main_output(run(loaded, inputs)), output, atol=1e-6)

    assert_same_outputs(_onnx_output(loaded, inputs, tmp_path / f"{name}.onnx"), output, atol=1e-4, rtol=1e-3)


class _AttentionNoNorm(torch.nn.Module):
    """``nn.MultiheadAttention`` between linears, without a LayerNorm, so head pruning is exact."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Linear(6, 16)
        self.attn = torch.nn.MultiheadAttention(16, 4, batch_first=True)
        self.out = torch.nn.Linear(16, 3)

    def forward(self, x):
        h = self.embed(x)
        return self.out(h + self.attn(h, h, h, need_weights=False)[0])


def test_removing_silenced_multihead_attention_heads_leaves_outputs_unchanged():
    torch.manual_seed(0)
    model, inputs = _AttentionNoNorm().eval(), torch.randn(2, 5, 6)
    expected, actual, result = run_oracle(model, inputs, fraction=0.5, seed=1)
    assert [(g.kind, g.channels_before, g.channels_after) for g in result.report.groups] == [("heads", 4, 2)]
    assert (result.model.attn.num_heads, result.model.attn.embed_dim) == (2, 8)
    assert_same_outputs(actual, expected, atol=1e-5, rtol=1e-5)


def test_an_odd_number_of_heads_left_in_a_transformer_encoder_prunes_and_runs():
    # PyTorch's encoder fast path refuses odd head counts, so the pruned model takes the composite path
    from prunekit.torch import prune_channels
    from tests.zoo import ZOO

    model, inputs = ZOO["transformer_encoder"]()
    for ratio, heads in ((0.25, 3), (0.75, 1)):
        result = prune_channels(model, inputs, 0.0, layer_ratios={"embedding": ratio})
        assert [layer.self_attn.num_heads for layer in result.model.encoder.layers] == [heads, heads]
        with torch.no_grad():
            assert result.model(inputs).shape == model(inputs).shape == (2, 5)


# -- architectures beyond the zoo -----------------------------------------------------------
F = torch.nn.functional
nn = torch.nn


class SqueezeExcite(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.bn = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.f1, self.f2 = nn.Linear(16, 4), nn.Linear(4, 16)
        self.c2, self.fc = nn.Conv2d(16, 8, 1), nn.Linear(8, 5)

    def forward(self, x):
        x = F.relu(self.bn(self.c1(x)))
        gate = torch.sigmoid(self.f2(F.relu(self.f1(x.mean((2, 3))))))
        return self.fc(F.relu(self.c2(x * gate[:, :, None, None])).mean((2, 3)))


class PixelShuffleUp(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 32, 1), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.c3(F.pixel_shuffle(F.relu(self.c2(F.relu(self.c1(x)))), 2))


class EinsumAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.qkv, self.o, self.head = nn.Linear(6, 16), nn.Linear(16, 48), nn.Linear(16, 16), nn.Linear(16, 3)

    def forward(self, x):
        h = self.inp(x)
        b, t, _ = h.shape
        q, k, v = (part.reshape(b, t, 4, -1) for part in self.qkv(h).chunk(3, -1))
        attention = torch.einsum("bqhd,bkhd->bhqk", q, k).softmax(-1)
        return self.head(h + self.o(torch.einsum("bhqk,bkhd->bqhd", attention, v).reshape(b, t, -1))).mean(1)


class SharedConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.c0, self.c, self.out = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        x = self.c0(x)
        return self.out(F.relu(self.c(F.relu(self.c(x)))))


class Audio1d(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv1d(1, 16, 5, padding=2), nn.BatchNorm1d(16)
        self.c2, self.b2, self.fc = nn.Conv1d(16, 32, 5, stride=2), nn.BatchNorm1d(32), nn.Linear(32, 4)

    def forward(self, x):
        x = F.relu(self.b2(self.c2(F.relu(self.b1(self.c1(x))))))
        return self.fc(F.adaptive_avg_pool1d(x, 1).squeeze(-1))


class FeaturePyramid(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.l1, self.l2, self.out = nn.Conv2d(8, 12, 1), nn.Conv2d(16, 12, 1), nn.Conv2d(24, 2, 3, padding=1)

    def forward(self, x):
        a = F.relu(self.c1(x))
        top = self.l2(F.relu(self.c2(a)))
        p1 = self.l1(a) + F.interpolate(top, scale_factor=2, mode="nearest")
        return self.out(torch.cat([p1, F.interpolate(top, size=p1.shape[-2:], mode="bilinear")], 1))


class WindowMlp(nn.Module):
    """Swin-style window partition: spatial reshapes and permutes around a channel MLP."""

    def __init__(self):
        super().__init__()
        self.stem, self.fc1, self.fc2, self.head = (
            nn.Conv2d(3, 16, 2, stride=2),
            nn.Linear(16, 32),
            nn.Linear(32, 16),
            nn.Linear(16, 4),
        )

    def forward(self, x):
        x = self.stem(x).permute(0, 2, 3, 1)
        b, h, w, c = x.shape
        t = x.view(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, 4, c)
        t = t + self.fc2(F.gelu(self.fc1(t)))
        t = t.view(b, h // 2, w // 2, 2, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
        return self.head(t.mean((1, 2)))


class LstmHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.lstm = nn.Embedding(50, 16), nn.LSTM(16, 24, batch_first=True)
        self.fc1, self.fc2 = nn.Linear(24, 32), nn.Linear(32, 3)

    def forward(self, x):
        h, _ = self.lstm(self.emb(x))
        return self.fc2(F.relu(self.fc1(h[:, -1])))


EXTRA = {
    "squeeze_excite": (SqueezeExcite, (2, 3, 8, 8), {"c1": 16, "f1": 4, "c2": 8}),
    "pixel_shuffle": (PixelShuffleUp, (1, 3, 6, 6), {"c1": 16, "c2": 8}),
    "einsum_attention": (EinsumAttention, (2, 5, 6), {"inp": 16, "qkv": 4}),
    "shared_conv": (SharedConv, (1, 3, 6, 6), {"c0": 8}),
    "audio_conv1d": (Audio1d, (2, 1, 40), {"c1": 16, "c2": 32}),
    "feature_pyramid": (FeaturePyramid, (1, 3, 8, 8), {"c1": 8, "c2": 16, "l2": 12}),
    "window_mlp": (WindowMlp, (1, 3, 16, 16), {"stem": 16, "fc1": 32}),
    "lstm_head": (LstmHead, None, {"emb": 16, "lstm": 24, "fc1": 32}),
}


@pytest.mark.parametrize("name", sorted(EXTRA))
def test_extra_architectures_group_as_expected_and_pass_the_oracle(name):
    from prunekit.torch import analyze_dependencies

    build, shape, expected_groups = EXTRA[name]
    torch.manual_seed(0)
    model = build().eval()
    inputs = torch.randint(0, 50, (2, 7)) if shape is None else torch.randn(*shape)
    graph = analyze_dependencies(model, inputs)
    assert {g.name: g.size for g in graph.groups} == expected_groups
    expected, actual, _ = run_oracle(model, inputs, fraction=0.5, seed=0)
    assert_same_outputs(actual, expected, atol=1e-5, rtol=1e-5)
