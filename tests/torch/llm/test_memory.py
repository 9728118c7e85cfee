"""The adaptive calibration batch: as many sequences per block call as the model's memory budget allows."""

from __future__ import annotations

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from prunekit.torch.llm.discovery import find_decoder_stack
from prunekit.torch.llm.memory import (
    MAX_BATCH_TOKENS,
    default_batch_size,
    estimate_bytes,
    model_bytes,
    transient_bytes_per_sequence,
)
from tests.torch.llm.tiny import tiny_model


def _gpt2_small() -> GPT2LMHeadModel:
    with torch.device("meta"):  # shapes only: no memory, no init time
        return GPT2LMHeadModel(GPT2Config(n_layer=12, n_embd=768, n_head=12, n_positions=1024, vocab_size=50257))


def test_transients_count_attention_scores_and_four_widest_buffers():
    model = _gpt2_small()
    # 12 heads x 512 x 512 scores + 4 x 512 x 3072 (the MLP's width), float32
    assert transient_bytes_per_sequence(model, find_decoder_stack(model), 512) == 512 * (12 * 512 + 4 * 3072) * 4


def test_gpt2_small_gets_two_sequences_per_call_at_512_and_one_at_1024():
    model = _gpt2_small()
    stack = find_decoder_stack(model)
    assert 470 * 2**20 < model_bytes(model) < 480 * 2**20  # 124M float32 parameters (475 MiB): a sixth is 79 MiB
    assert default_batch_size(model, stack, 32, 512) == 2  # 36 MiB of transients per sequence
    assert default_batch_size(model, stack, 32, 1024) == 1  # 96 MiB per sequence: even one exceeds a sixth
    assert default_batch_size(model, stack, 1, 512) == 1  # never more than the calibration set


def test_a_small_model_gets_the_full_token_batch():
    model = tiny_model("llama")
    stack = find_decoder_stack(model)
    assert default_batch_size(model, stack, 128, 32) == MAX_BATCH_TOKENS // 32
    assert default_batch_size(model, stack, 6, 32) == 6
    assert default_batch_size(model, stack, 4, 4096) == 1  # longer than the token cap: still one sequence


def test_the_estimate_counts_the_upper_blocks_the_collector_sums_for_wide_inputs():
    model = _gpt2_small()
    stack = find_decoder_stack(model)
    parts = estimate_bytes(model, stack, (32, 512), 2, hessian=True)
    # c_attn, attn.c_proj and c_fc read 768 features (one 768 x 768 sum each); mlp.c_proj reads 3072,
    # kept as the 21 blocks of 512 x 512 on and above the diagonal of its 6 x 6 block grid
    assert parts["statistics"] == (3 * 768 * 768 + 21 * 512 * 512) * 4  # 28 MiB, not 42.75
    assert parts["activations"] == 32 * 512 * 768 * 4
    assert parts["intermediates"] == 2 * 512 * (12 * 512 + 4 * 3072) * 4
    assert estimate_bytes(model, stack, (32, 512), 2, hessian=False)["statistics"] == (3 * 768 + 3072) * 4
