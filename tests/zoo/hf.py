"""Randomly initialised ``transformers`` models built from small configs (no weights downloaded)."""

from __future__ import annotations

import torch
from torch import nn


def _image(batch: int = 2, size: int = 32) -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.randn(batch, 3, size, size)}


def _tokens(vocab_size: int, batch: int = 2, length: int = 12) -> dict[str, torch.Tensor]:
    return {
        "input_ids": torch.randint(0, vocab_size, (batch, length)),
        "attention_mask": torch.ones(batch, length, dtype=torch.long),
    }


def hf_resnet() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64], depths=[1, 1, 1], layer_type="bottleneck", num_labels=10)
    return ResNetForImageClassification(config).eval(), _image()


def hf_mobilenetv2() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    config = MobileNetV2Config(image_size=32, depth_multiplier=0.35, finegrained_output=False, num_labels=10)
    return MobileNetV2ForImageClassification(config).eval(), _image()


def hf_convnext() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    from transformers import ConvNextConfig, ConvNextForImageClassification

    config = ConvNextConfig(patch_size=4, num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], image_size=32, num_labels=10)
    return ConvNextForImageClassification(config).eval(), _image()


def hf_vit() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=10,
    )
    return ViTForImageClassification(config).eval(), _image()


def hf_bert() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    inputs = _tokens(config.vocab_size)
    inputs["token_type_ids"] = torch.zeros_like(inputs["input_ids"])
    return BertModel(config).eval(), inputs


def hf_gpt2() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=100, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).eval(), _tokens(config.vocab_size)


def hf_llama_gqa() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval(), _tokens(config.vocab_size)
