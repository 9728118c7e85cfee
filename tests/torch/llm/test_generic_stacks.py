"""prunekit.llm on stacks beyond the plain identical-block decoder: towers beside the language model,
mixed blocks, per-layer masks, unreached cross-attention, refusals that leave the model untouched."""

from __future__ import annotations

import pytest
import torch
import transformers
from torch import nn

from prunekit.errors import ConfigError
from prunekit.torch.llm.capture import capture_block_inputs
from prunekit.torch.llm.depth import prune_depth
from prunekit.torch.llm.discovery import find_decoder_stack
from prunekit.torch.llm.methods import sparsegpt, wanda
from prunekit.torch.llm.sequential import prune
from prunekit.torch.llm.width import prune_width
from tests.torch.llm.test_prune import _reference_all_in_memory
from tests.torch.llm.tiny import VOCAB, tokens


def _causal_lm(config_name: str, **kwargs: object) -> nn.Module:
    torch.manual_seed(0)
    config = getattr(transformers, config_name)(vocab_size=VOCAB, **kwargs)
    return transformers.AutoModelForCausalLM.from_config(config).float().eval()


class _Block(nn.Module):
    def __init__(self, width: int, experts: int = 0) -> None:
        super().__init__()
        self.proj = nn.Linear(width, width)
        self.experts = nn.ModuleList([nn.Linear(width, width) for _ in range(experts)])


class _TwoTowers(nn.Module):
    """A vision tower of 3 blocks beside a language model of 2 mixed blocks holding 4-expert lists."""

    def __init__(self) -> None:
        super().__init__()
        self.vision = nn.Module()
        self.vision.layers = nn.ModuleList([_Block(8) for _ in range(3)])
        self.lm = nn.Module()
        self.lm.embed = nn.Embedding(10, 8)
        self.lm.layers = nn.ModuleList([_Block(8, experts=4), _Block(8, experts=0)])

    def get_input_embeddings(self) -> nn.Module:
        return self.lm.embed


def test_discovery_takes_the_stack_beside_the_input_embeddings_with_mixed_blocks_not_nested_lists():
    stack = find_decoder_stack(_TwoTowers())
    assert stack.path == "lm.layers"  # not the longer vision tower, not a 4-long expert list
    assert [len(p) for p in stack.projections] == [5, 1]  # mixed blocks: each keeps its own projections


GEMMA2 = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=64,
    sliding_window=4,
)


def test_each_block_replays_with_its_own_mask():
    model = _causal_lm("Gemma2Config", **GEMMA2)
    batches = capture_block_inputs(model, find_decoder_stack(model), tokens(2, 16), batch_size=2)
    masks = [kwargs["attention_mask"] for _, kwargs in batches[0].per_block]
    assert not torch.equal(masks[0], masks[1])  # sliding-window block 0, global block 1
    assert torch.equal(masks[0], masks[2])


@pytest.mark.parametrize("method", [wanda, sparsegpt])
def test_sliding_window_stack_layer_by_layer_equals_all_activations_in_memory(method):
    ids = tokens(4, 16)
    sequential, reference = _causal_lm("Gemma2Config", **GEMMA2), _causal_lm("Gemma2Config", **GEMMA2)
    prune(sequential, ids, method=method, sparsity=0.5, n_samples=4, seq_len=16, batch_size=2)
    _reference_all_in_memory(reference, ids, method, 0.5)
    for (name, a), (_, b) in zip(sequential.named_parameters(), reference.named_parameters(), strict=True):
        assert torch.equal(a == 0, b == 0), name
        assert torch.allclose(a, b, atol=1e-5), name


def test_cross_attention_no_token_reaches_is_pruned_by_magnitude_and_named():
    model = _causal_lm(
        "BartConfig",
        d_model=32,
        decoder_layers=2,
        encoder_layers=2,
        decoder_attention_heads=4,
        encoder_attention_heads=4,
        decoder_ffn_dim=64,
        encoder_ffn_dim=64,
        max_position_embeddings=64,
    )
    result = prune(model, tokens(4, 32), method="wanda", sparsity=0.5, n_samples=4, seq_len=32)
    unreached = result.extra["unreached"]
    cross = ("q_proj", "k_proj", "v_proj", "out_proj")  # the whole cross-attention is skipped without encoder states
    assert sorted(unreached) == sorted(f"model.decoder.layers.{i}.encoder_attn.{p}" for i in range(2) for p in cross)
    assert all(result.achieved[name] == 0.5 for name in result.achieved)


def test_fused_expert_tensors_stay_dense_and_are_reported_when_no_calibration_shows_their_use():
    model = _causal_lm(
        "Qwen2MoeConfig",
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=32,
        num_experts=4,
        num_experts_per_tok=2,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    result = prune(model, method="magnitude", sparsity=0.5)  # how the experts are used is learned from a forward
    assert set(result.extra["dense_weights"]) >= {"mlp.experts.gate_up_proj", "mlp.experts.down_proj"}
    experts = 2 * 4 * (2 * 32 * 32 + 32 * 32)
    assert result.extra["dense_weights"]["mlp.experts.gate_up_proj"] == 2 * 4 * 2 * 32 * 32
    assert 0.5 < result.extra["dense_weight_share"] < 1.0 and experts > 0


def test_the_cli_says_which_weights_stay_dense_and_which_fell_back_to_magnitude(capsys):
    from prunekit.commands.llm import _note_left_dense

    _note_left_dense(
        {"dense_weights": {"mlp.experts.gate_up_proj": 300, "mlp.experts.down_proj": 100}, "dense_weight_share": 0.8}
    )
    _note_left_dense({"unreached": ["a.q_proj", "a.k_proj"]})
    _note_left_dense({})
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "note: 80.0% of the blocks' weights are no Linear/Conv1D or per-expert projection and stay dense "
        "(largest: mlp.experts.gate_up_proj, mlp.experts.down_proj); the sparsity above counts the pruned weights only",
        "note: no calibration token reached 2 projection(s); pruned by magnitude",
    ]


class _NormedBetweenBlocks(nn.Module):
    """One list of blocks whose forward normalises the hidden states between them: no block can be replayed alone."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 8)
        self.layers = nn.ModuleList([nn.Sequential(nn.Linear(8, 8)) for _ in range(2)])
        self.norm = nn.LayerNorm(8)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids)
        for layer in self.layers:
            x = self.norm(layer(x))
        return x


def test_a_forward_changing_the_hidden_states_between_blocks_is_refused_naming_the_model():
    with pytest.raises(ConfigError, match=r"_NormedBetweenBlocks changes the hidden states between 'layers.0' and 'layers.1'"):
        prune(_NormedBetweenBlocks(), tokens(4, 32), method="wanda", sparsity=0.5, n_samples=4, seq_len=32)


def test_width_refused_by_the_config_leaves_the_model_untouched():
    model = _causal_lm("BloomConfig", hidden_size=32, n_layer=2, n_head=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match=r"BloomForCausalLM's config holds no field equal to its MLP width 128"):
        prune_width(model, tokens(4, 32), mlp=0.5, n_samples=4, seq_len=32)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_width_slices_a_norm_between_up_and_down_projections():
    model = _causal_lm(
        "BitNetConfig", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
    )
    prune_width(model, tokens(4, 32), mlp=0.5, n_samples=4, seq_len=32)
    assert model.model.layers[0].mlp.ffn_sub_norm.weight.shape == (32,)
    assert model.config.intermediate_size == 32
    assert torch.isfinite(model(tokens(1)).logits).all()


def test_depth_renumbers_layer_id_so_generate_runs():
    model = _causal_lm(
        "GPTNeoConfig",
        hidden_size=32,
        num_layers=3,
        num_heads=4,
        attention_types=[[["global", "local"], 1], [["global"], 1]],
        max_position_embeddings=64,
    )
    prune_depth(model, tokens(4, 32), remove=1, n_samples=4, seq_len=32)
    layers = model.transformer.h
    assert [block.attn.attention.layer_id for block in layers] == [0, 1]
    assert model.config.num_layers == 2 and len(model.config.attention_layers) == 2
    out = model.generate(tokens(1, 4), max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 7)


def test_depth_the_config_cannot_describe_puts_every_block_back():
    from prunekit.torch.llm.depth import remove_blocks
    from tests.torch.llm.tiny import tiny_model

    model = tiny_model("llama", num_hidden_layers=3)
    model.config.num_hidden_layers = 4  # a config out of step with the model: no field says 3 blocks
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match=r"removing blocks \[1\] of LlamaForCausalLM: its config cannot describe"):
        remove_blocks(model, [1])
    assert len(model.model.layers) == 3 and model.config.num_hidden_layers == 4
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1, 2]
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_width_slices_a_fused_gate_up_chunk_by_chunk_as_the_oracle_wants():
    from tests.torch.llm.tiny import tiny_model

    model = tiny_model("phi3")
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    result = prune_width(model, tokens(4, 32), mlp=0.5, n_samples=4, seq_len=32)
    kept = [j for j in range(64) if j not in set(result.removed_neurons["model.layers.0"])]
    fused = model.model.layers[0].mlp.gate_up_proj.weight
    assert fused.shape == (64, 32) and model.config.intermediate_size == 32
    gate_up = dense["model.layers.0.mlp.gate_up_proj.weight"]
    assert torch.equal(fused, torch.cat([gate_up[kept], gate_up[[64 + j for j in kept]]]))  # gate rows, then up rows
    assert torch.isfinite(model(tokens(1)).logits).all()


def test_depth_passes_over_a_block_the_config_needs_where_it_is():
    from tests.zoo.llm_generated import build_causal_lm

    model = build_causal_lm("glm4_moe")  # a dense block 0 (first_k_dense_replace=1), then MoE blocks
    result = prune_depth(model, tokens(4, 32), remove=1, n_samples=4, seq_len=32)
    assert result.removed == [1] and len(model.model.layers) == 1  # block 0 cannot go, whatever its influence
    assert model.config.num_hidden_layers == 1
    with torch.device("meta"):
        rebuilt = type(model)(model.config)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_depth_shrinks_the_text_config_not_the_vision_tower_s():
    from tests.zoo.llm_generated import build_causal_lm

    model = build_causal_lm("gemma3")  # vision and text configs both count 2 layers
    prune_depth(model, tokens(4, 32), remove=1, n_samples=4, seq_len=32)
    assert model.config.text_config.num_hidden_layers == 1
    assert model.config.vision_config.num_hidden_layers == 2
