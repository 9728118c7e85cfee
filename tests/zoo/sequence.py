"""Attention and token-mixing zoo models: an ``nn.TransformerEncoder`` classifier and an MLP-Mixer."""

from __future__ import annotations

import torch
from torch import nn


class TransformerClassifier(nn.Module):
    """Token embedding + learned positions, ``nn.TransformerEncoder`` (pre-norm), mean pool, head."""

    def __init__(
        self,
        vocab_size: int = 100,
        d_model: int = 32,
        nhead: int = 4,
        num_layers: int = 2,
        dim_feedforward: int = 64,
        max_len: int = 32,
        num_classes: int = 5,
    ):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.pos_embedding = nn.Parameter(torch.zeros(1, max_len, d_model))
        layer = nn.TransformerEncoderLayer(
            d_model, nhead, dim_feedforward, dropout=0.1, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embedding(input_ids) + self.pos_embedding[:, : input_ids.shape[1]]
        x = self.encoder(x)
        return self.head(x.mean(dim=1))


class MlpBlock(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class MixerBlock(nn.Module):
    """Token mixing (an MLP across patches, applied to the transposed tensor), then channel mixing."""

    def __init__(self, num_patches: int, dim: int, tokens_hidden: int, channels_hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mixing = MlpBlock(num_patches, tokens_hidden)
        self.norm2 = nn.LayerNorm(dim)
        self.channel_mixing = MlpBlock(dim, channels_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x).transpose(1, 2)
        x = x + self.token_mixing(y).transpose(1, 2)
        return x + self.channel_mixing(self.norm2(x))


class MlpMixer(nn.Module):
    """MLP-Mixer: a strided-conv patch embedding, mixer blocks, a final norm and a linear head."""

    def __init__(
        self,
        image_size: int = 32,
        patch_size: int = 8,
        dim: int = 32,
        depth: int = 2,
        tokens_hidden: int = 16,
        channels_hidden: int = 64,
        num_classes: int = 10,
    ):
        super().__init__()
        num_patches = (image_size // patch_size) ** 2
        self.stem = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)
        self.blocks = nn.Sequential(*[MixerBlock(num_patches, dim, tokens_hidden, channels_hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x).flatten(2).transpose(1, 2)
        x = self.blocks(x)
        x = self.norm(x)
        return self.head(x.mean(dim=1))
