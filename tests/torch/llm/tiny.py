"""Tiny randomly initialised causal LMs of several families (no downloads), for the prunekit.llm tests."""

from __future__ import annotations

import torch
import transformers

VOCAB = 96

# family -> (config class, kwargs); hidden 32, 2 blocks, 4 heads, context 64
FAMILIES: dict[str, tuple[str, dict]] = {
    "llama": (
        "LlamaConfig",
        dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
        ),
    ),
    "gpt2": ("GPT2Config", dict(n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0)),
    "opt": (
        "OPTConfig",
        dict(
            hidden_size=32,
            ffn_dim=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            word_embed_proj_dim=32,
            max_position_embeddings=64,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=1,
        ),
    ),
    "gpt_neox": (
        "GPTNeoXConfig",
        dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=64,
            bos_token_id=0,
            eos_token_id=0,
        ),
    ),
    "qwen2": (
        "Qwen2Config",
        dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
        ),
    ),
    "mistral": (
        "MistralConfig",
        dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
        ),
    ),
    "phi3": (
        "Phi3Config",
        dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            pad_token_id=0,
            bos_token_id=0,
            eos_token_id=0,
        ),
    ),
    "gemma": (
        "GemmaConfig",
        dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=64,
        ),
    ),
}


def tiny_config(family: str, **overrides: object) -> transformers.PretrainedConfig:
    """The family's tiny config (vocab 96) with ``overrides``."""
    name, kwargs = FAMILIES[family]
    return getattr(transformers, name)(vocab_size=VOCAB, **{**kwargs, **overrides})


def tiny_model(family: str, seed: int = 0, **overrides: object) -> torch.nn.Module:
    """A randomly initialised tiny causal LM of ``family`` in eval mode, float32."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(tiny_config(family, **overrides))
    return model.float().eval()


def tokens(n: int = 6, length: int = 32, seed: int = 1) -> torch.Tensor:
    """``[n, length]`` random token ids below VOCAB."""
    return torch.randint(0, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))
