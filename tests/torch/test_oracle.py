"""The oracle over the zoo: silenced channels, once removed, leave every output unchanged; and
every zoo model pruned at 50% runs, keeps its output shape, shrinks as reported, exports to ONNX
and round-trips through save_pruned/load_pruned."""

from __future__ import annotations

import pytest
import torch

from prunekit.torch import count_macs, count_params, load_pruned, prune_channels, save_pruned
from tests.assertions import assert_same_outputs
from tests.torch.structured_helpers import run_oracle
from tests.zoo import ZOO, main_output, run

NAMES = sorted(ZOO)
#: Zoo models whose attention heads form exact groups (no normalisation over the head channels),
#: so the oracle must remove heads there too.
EXACT_HEADS = {"hf_bert", "hf_gpt2", "hf_llama_gqa", "hf_vit"}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
    torch.onnx.export(_MainOutput(model, names), tensors, str(path), dynamo=False, input_names=input_names)
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
