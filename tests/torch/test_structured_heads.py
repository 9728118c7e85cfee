"""Attention heads found from the computation: hand-written blocks whose head counts live in
attributes no list knows, and small random-init transformers models (configs only)."""

from __future__ import annotations

import warnings

import pytest
import torch

from prunekit.errors import ConfigError
from prunekit.torch import analyze_dependencies, load_pruned, prune_channels, save_pruned
from prunekit.torch.structured.prune import HeadsNotFollowedWarning, PruningShortfallWarning
from tests.torch.attention_blocks import BLOCKS, build
from tests.torch.structured_helpers import one_torch_thread, run_oracle  # noqa: F401
from tests.zoo import main_output, run

HEAD_ATTRIBUTES = {
    "fused_view": {"n_local_heads": 2, "width": 16},
    "chunk_sdpa": {"heads": 2},
    "split_gqa": {"q_heads": 2, "kv_groups": 1},
    "cross": {"nh": 2},
    "bias_table_and_gate": {"num_h": 2},
    "reduced_kv": {"h": 2, "side": 4},
    "rotary": {"heads_n": 2, "size": 8},
}


@pytest.mark.parametrize("name", list(BLOCKS))
def test_heads_are_found_and_removed_whatever_the_attributes_are_called(name):
    model, inputs = build(name)
    graph = analyze_dependencies(model, inputs)
    heads = [g for g in graph.groups if g.kind == "heads"]
    assert len(heads) == 1 and heads[0].exact
    assert heads[0].size == (2 if name == "split_gqa" else 4)  # grouped-query: a channel is a key/value group
    with warnings.catch_warnings():
        warnings.simplefilter("error", PruningShortfallWarning)
        result = prune_channels(model, inputs, 0.5)
    attention = result.model.attention
    for attribute, value in HEAD_ATTRIBUTES[name].items():
        assert getattr(attention, attribute) == value, attribute
    assert result.report.macs_ratio >= 1.6
    with torch.no_grad():
        assert result.model(*inputs).shape == model(*inputs).shape


@pytest.mark.parametrize("name", list(BLOCKS))
def test_removing_silenced_heads_keeps_the_outputs(name):
    model, inputs = build(name)
    expected, actual, result = run_oracle(model, inputs)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    assert result.report.macs_ratio > 1.0


def test_per_head_tables_and_gates_shrink_with_the_heads():
    model, inputs = build("bias_table_and_gate")
    result = prune_channels(model, inputs, 0.5)
    kept = result.removed["attention.q"]
    survivors = [h for h in range(4) if h not in kept]
    attention = result.model.attention
    assert tuple(attention.table.shape) == (11, 2) and tuple(attention.gate.shape) == (2,)
    assert torch.equal(attention.gate, model.attention.gate[survivors])
    assert torch.equal(attention.table, model.attention.table[:, survivors])


def test_rotary_heads_keep_their_whole_head_dim():
    model, inputs = build("rotary")
    result = prune_channels(model, inputs, 0.5)
    removed = result.removed["attention.wq"]
    rows = [h * 8 + d for h in range(4) if h not in removed for d in range(8)]
    assert torch.equal(result.model.attention.wq.weight, model.attention.wq.weight[rows])
    assert tuple(result.model.attention.cos.shape) == (6, 8)


def test_repaired_attributes_are_replayed_by_load_pruned(tmp_path):
    model, inputs = build("fused_view")
    result = prune_channels(model, inputs, 0.5)
    names = {(a["module"], a["name"]) for a in result.plan["attributes"]}
    assert {("attention", "n_local_heads"), ("attention", "width")} <= names
    save_pruned(result, tmp_path / "attention.safetensors")
    reloaded = load_pruned(tmp_path / "attention.safetensors", lambda: build("fused_view")[0])
    assert (reloaded.attention.n_local_heads, reloaded.attention.width) == (2, 16)
    with torch.no_grad():
        assert torch.equal(reloaded(*inputs), result.model(*inputs))


def _tokens(vocab: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return {"input_ids": torch.randint(0, vocab, (2, 12)), "attention_mask": torch.ones(2, 12, dtype=torch.long)}


def _swin():
    from transformers import SwinConfig, SwinModel

    config = SwinConfig(image_size=32, patch_size=2, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4)
    return SwinModel(config).eval(), {"pixel_values": torch.randn(2, 3, 32, 32)}


def _t5():
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=8)
    return T5EncoderModel(config).eval(), {"input_ids": _tokens(100)["input_ids"]}


def _bloom():
    from transformers import BloomConfig, BloomForCausalLM

    return BloomForCausalLM(BloomConfig(vocab_size=100, hidden_size=32, n_layer=2, n_head=4)).eval(), _tokens(100)


# (factory, number of head groups expected): Swin's windows carry a relative-position bias table per
# head (a table read by a tensor index); T5's relative bias is an embedding with one column per head,
# computed once and shared by every layer, which ties all layers' heads into one group; BLOOM's ALiBi
# slopes are computed from the head count, so its heads stay and head_dim channels go.
TRANSFORMERS = {"swin": (_swin, 4), "t5": (_t5, 1), "bloom": (_bloom, 0)}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TRANSFORMERS))
def test_transformers_models_lose_heads_and_half_their_macs(name):
    pytest.importorskip("transformers")
    factory, head_groups = TRANSFORMERS[name]
    torch.manual_seed(0)
    model, inputs = factory()
    graph = analyze_dependencies(model, inputs)
    assert sum(g.kind == "heads" for g in graph.groups) == head_groups
    assert [e.text for e in graph.left_alone if not e.expected] == []
    result = prune_channels(model, inputs, 0.5)
    assert result.report.macs_ratio >= 1.6
    with torch.no_grad():
        assert main_output(run(result.model, inputs)).shape == main_output(run(model, inputs)).shape
    expected, actual, _ = run_oracle(model, inputs)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def test_swin_relative_position_tables_shrink_with_their_heads():
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    model, inputs = _swin()
    result = prune_channels(model, inputs, 0.5)
    attention = result.model.encoder.layers[1].blocks[0].attention
    assert attention.relative_position_bias.relative_position_bias_table.shape == (49, 2)
    assert attention.num_attention_heads == 2 and attention.head_dim == 8
    assert attention.q_proj.out_features == 16


class StackedHeads(torch.nn.Module):
    """Heads made by stacking chunks (no reshape into heads): the structure cannot be followed."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = (torch.nn.Linear(32, 32) for _ in range(3))
        self.out = torch.nn.Linear(32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (torch.stack(p(x).chunk(4, dim=-1), 1) for p in (self.q, self.k, self.v))
        heads = (q @ k.transpose(-2, -1)).softmax(-1) @ v
        return self.out(torch.cat(heads.unbind(1), dim=-1)).mean(1)


def test_attention_whose_heads_cannot_be_followed_is_named_with_the_reason_and_strict_raises():
    torch.manual_seed(0)
    model, x = StackedHeads().eval(), torch.randn(2, 6, 32)
    graph = analyze_dependencies(model, x)
    assert [label for label, _ in graph.head_problems] == ["<root>:matmul", "<root>:matmul"]
    reason = graph.head_problems[0][1]
    assert reason == "head structure not understood: the heads of <root>:matmul could not be followed back past <root>:stack"
    assert reason in graph.summary()
    with pytest.warns(
        HeadsNotFollowedWarning,
        match=r"whose structure was not understood: head structure not understood: the heads of <root>:matmul",
    ):
        result = prune_channels(model, x, 0.5)
    assert reason in result.report.notes
    with pytest.raises(ConfigError, match="strict=True: head structure not understood: the heads of <root>:matmul"):
        analyze_dependencies(model, x, strict=True)


@pytest.mark.parametrize("name", list(BLOCKS))
def test_understood_attention_reports_no_head_problem(name):
    model, inputs = build(name)
    assert analyze_dependencies(model, inputs).head_problems == []
