"""Width pruning: exact new widths, the lowest-importance units removed, zero-importance units removed losslessly, reload."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from prunekit.errors import ConfigError
from prunekit.torch.llm.discovery import weight_matrix
from prunekit.torch.llm.saving import save_pruned
from prunekit.torch.llm.width import prune_width
from tests.torch.llm.tiny import tiny_model, tokens


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt", "gpt_neox", "gemma"])
def test_mlp_width_shrinks_config_and_reloads(family, tmp_path):
    model = tiny_model(family)
    result = prune_width(model, tokens(4, 32), mlp=0.25, n_samples=4, seq_len=32)
    before, after = result.intermediate
    assert after == before - before // 4
    widths = {
        weight_matrix(m).shape[1]
        for n, m in model.named_modules()
        if n.endswith(("down_proj", "fc2", "mlp.c_proj", "dense_4h_to_h"))
    }
    assert widths == {after}
    reloaded = AutoModelForCausalLM.from_pretrained(save_pruned(model, tmp_path / "out")).eval()
    assert torch.equal(reloaded(tokens(1, 8)).logits, model(tokens(1, 8)).logits)


def test_neurons_that_contribute_nothing_are_removed_first_and_change_nothing():
    model = tiny_model("llama")
    ids = tokens(1, 16)
    dead = [3, 10, 17, 40, 41, 50, 60, 63, 1, 2, 5, 7, 8, 9, 11, 12]  # 16 of 64 neurons per block
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.down_proj.weight[:, dead] = 0.0
        expected = model(ids).logits
    result = prune_width(model, tokens(4, 32), mlp=0.25, n_samples=4, seq_len=32)
    assert all(sorted(v) == sorted(dead) for v in result.removed_neurons.values())
    assert torch.allclose(model(ids).logits, expected, atol=1e-5)


def test_kv_groups_with_silent_outputs_are_removed_losslessly(tmp_path):
    model = tiny_model("llama", num_attention_heads=4, num_key_value_heads=2)
    ids = tokens(1, 16)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[:, 16:] = 0.0  # query heads 2, 3 = KV group 1 write nothing
        expected = model(ids).logits
    result = prune_width(model, tokens(4, 32), heads=0.5, n_samples=4, seq_len=32)
    assert result.kv_groups == (2, 1) and all(v == [1] for v in result.removed_groups.values())
    assert model.config.num_attention_heads == 2 and model.config.num_key_value_heads == 1 and model.config.head_dim == 8
    assert torch.allclose(model(ids).logits, expected, atol=1e-5)
    reloaded = AutoModelForCausalLM.from_pretrained(save_pruned(model, tmp_path / "out")).eval()
    assert torch.allclose(reloaded(ids).logits, expected, atol=1e-5)
    assert reloaded.generate(tokens(1, 4), max_new_tokens=4, min_new_tokens=4, do_sample=False).shape == (1, 8)


def test_heads_of_configs_that_cannot_describe_them_are_refused_before_any_change():
    model = tiny_model("gpt2")
    before = {n: p.clone() for n, p in model.named_parameters()}
    with pytest.raises(ConfigError, match="cannot describe fewer heads"):
        prune_width(model, tokens(4, 32), heads=0.5, n_samples=4, seq_len=32)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    with pytest.raises(ConfigError, match="in \\[0, 1\\)"):
        prune_width(model, tokens(4, 32), mlp=1.0)
