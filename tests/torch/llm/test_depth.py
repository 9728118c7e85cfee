"""Depth pruning: block influence by hand, removal keeps generate() (with KV cache) and from_pretrained working."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from prunekit.errors import ConfigError
from prunekit.torch.llm.depth import block_influence, prune_depth, remove_blocks, skip_perplexity
from prunekit.torch.llm.discovery import find_decoder_stack
from prunekit.torch.llm.evaluate import perplexity
from prunekit.torch.llm.saving import save_pruned
from tests.torch.llm.tiny import tiny_model, tokens


def test_block_influence_is_one_minus_the_mean_cosine_of_hidden_states_in_and_out():
    model = tiny_model("llama", num_hidden_layers=3)
    ids = tokens(4, 16)
    with torch.no_grad():
        states = model(ids, output_hidden_states=True).hidden_states  # embeddings, after block 0, 1, (2 is normed)
    expected = [1 - float(torch.nn.functional.cosine_similarity(states[i], states[i + 1], dim=-1).mean()) for i in range(2)]
    got = block_influence(model, ids, batch_size=3)
    assert got[:2] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "phi3"])
def test_depth_pruned_model_generates_with_cache_and_reloads(family, tmp_path):
    model = tiny_model(family, **({"n_layer": 4} if family == "gpt2" else {"num_hidden_layers": 4}))
    result = prune_depth(model, tokens(4, 32), remove=0.5, n_samples=4, seq_len=32)
    assert len(result.removed) == 2 and result.blocks_left == 2
    assert sorted(result.influence)[:2] == sorted(result.influence[i] for i in result.removed)
    assert model.config.num_hidden_layers == 2 and len(find_decoder_stack(model).blocks) == 2
    prompt = tokens(1, 5)
    cached = model.generate(prompt, max_new_tokens=6, min_new_tokens=6, do_sample=False, use_cache=True)
    uncached = model.generate(prompt, max_new_tokens=6, min_new_tokens=6, do_sample=False, use_cache=False)
    assert cached.shape == (1, 11) and torch.equal(cached, uncached)
    reloaded = AutoModelForCausalLM.from_pretrained(save_pruned(model, tmp_path / "out")).eval()
    assert torch.equal(reloaded(tokens(1, 8)).logits, model(tokens(1, 8)).logits)


def test_removing_blocks_equals_skipping_them_in_the_forward():
    model = tiny_model("llama", num_hidden_layers=4)
    ids = tokens(2, 12)
    stack = find_decoder_stack(model)
    with torch.no_grad():
        manual = model.model.embed_tokens(ids)
        position = torch.arange(12).unsqueeze(0)
        rotary = model.model.rotary_emb(manual, position_ids=position)
        mask = torch.full((12, 12), float("-inf")).triu(1)[None, None]
        for i in (0, 3):
            manual = stack.blocks[i](manual, attention_mask=mask, position_ids=position, position_embeddings=rotary)
        expected = model.lm_head(model.model.norm(manual))
    remove_blocks(model, [1, 2])
    assert torch.allclose(model(ids).logits, expected, atol=1e-5)


def test_last_criterion_and_bad_amounts():
    model = tiny_model("llama", num_hidden_layers=4)
    assert prune_depth(model, remove=1, criterion="last").removed == [3]
    for bad in (0.0, 1.0, 4, 0):
        with pytest.raises(ConfigError):
            prune_depth(tiny_model("llama", num_hidden_layers=4), tokens(), remove=bad, n_samples=4, seq_len=32)
    with pytest.raises(ConfigError, match="criterion"):
        prune_depth(model, tokens(), criterion="random")


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_skip_perplexity_is_the_perplexity_with_that_block_removed(family):
    layers = {"n_layer": 3} if family == "gpt2" else {"num_hidden_layers": 3}
    model = tiny_model(family, **layers)
    ids = tokens(4, 16)
    got = skip_perplexity(model, ids, batch_size=3)
    for index in range(3):
        without = tiny_model(family, **layers)  # same seed, same weights
        remove_blocks(without, [index])
        expected = perplexity(without, ids.reshape(-1), context=16).perplexity
        assert got[index] == pytest.approx(expected, rel=1e-4), index
    assert len(set(round(p, 3) for p in got)) == 3  # the blocks differ: the score tells them apart


def test_the_perplexity_criterion_removes_the_blocks_missed_least():
    model = tiny_model("llama", num_hidden_layers=4)
    ids = tokens(4, 32)
    scores = skip_perplexity(tiny_model("llama", num_hidden_layers=4), ids)
    result = prune_depth(model, ids, remove=2, criterion="perplexity", n_samples=4, seq_len=32)
    assert result.removed == sorted(sorted(range(4), key=lambda i: scores[i])[:2])
    assert result.skip_perplexity == pytest.approx(scores) and result.influence == []
    assert model.config.num_hidden_layers == 2
    with pytest.raises(ConfigError, match="needs calibration data"):
        prune_depth(tiny_model("llama", num_hidden_layers=4), criterion="perplexity")
