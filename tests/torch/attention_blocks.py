"""Hand-written attention blocks whose heads prunekit must find from the computation alone.

Each reshapes with sizes read from attributes that are not in any list of known names
(``n_local_heads``, ``width``, ``per_head``, ``kv_groups`` ...), so the head structure has to
come from the traced graph: the reshape feeding an attention product, and the reshape arguments.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

DIM, HEADS, TOKENS = 32, 4, 6


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if bias is not None:
        scores = scores + bias
    return scores.softmax(-1) @ v


class FusedViewAttention(nn.Module):
    """One qkv projection viewed as (b, t, 3, heads, d) and permuted (the GPT/ViT style)."""

    def __init__(self) -> None:
        super().__init__()
        self.n_local_heads, self.width = HEADS, DIM
        self.qkv = nn.Linear(DIM, 3 * DIM)
        self.proj = nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        qkv = self.qkv(x).view(b, t, 3, self.n_local_heads, self.width // self.n_local_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        return self.proj(_attend(q, k, v).transpose(1, 2).reshape(b, t, self.width))


class ChunkAttention(nn.Module):
    """One qkv projection chunked into three, each viewed into heads with literal-looking sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.per_head, self.heads = DIM // HEADS, HEADS
        self.to_qkv = nn.Linear(DIM, 3 * DIM, bias=False)
        self.to_out = nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (p.view(b, t, self.heads, self.per_head).transpose(1, 2) for p in self.to_qkv(x).chunk(3, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, t, self.heads * self.per_head))


class SplitGQAAttention(nn.Module):
    """Grouped-query attention: 4 query heads share 2 key/value heads (split of a fused projection)."""

    def __init__(self) -> None:
        super().__init__()
        self.q_heads, self.kv_groups, self.d = HEADS, 2, DIM // HEADS
        self.qkv = nn.Linear(DIM, (self.q_heads + 2 * self.kv_groups) * self.d)
        self.o = nn.Linear(self.q_heads * self.d, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(x).split([self.q_heads * self.d, self.kv_groups * self.d, self.kv_groups * self.d], dim=-1)
        q = q.view(b, t, self.q_heads, self.d).transpose(1, 2)
        k = k.view(b, t, self.kv_groups, self.d).transpose(1, 2)
        v = v.view(b, t, self.kv_groups, self.d).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        return self.o(out.transpose(1, 2).reshape(b, t, self.q_heads * self.d))


class CrossAttention(nn.Module):
    """Queries from the tokens, keys and values from a longer context of another width."""

    def __init__(self, context_dim: int = 24) -> None:
        super().__init__()
        self.nh, self.hd = HEADS, DIM // HEADS
        self.q = nn.Linear(DIM, DIM)
        self.kv = nn.Linear(context_dim, 2 * DIM)
        self.out = nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        s = context.shape[1]
        q = self.q(x).view(b, t, self.nh, self.hd).transpose(1, 2)
        k, v = self.kv(context).view(b, s, 2, self.nh, self.hd).permute(2, 0, 3, 1, 4)
        return self.out(_attend(q, k, v).transpose(1, 2).reshape(b, t, self.nh * self.hd))


class BiasedGatedAttention(nn.Module):
    """Separate q/k/v, a learned relative-position bias table indexed per token pair, and a
    learned gate per head: both per-head tensors must shrink with the heads."""

    def __init__(self) -> None:
        super().__init__()
        self.num_h, self.dh = HEADS, DIM // HEADS
        self.q, self.k, self.v = nn.Linear(DIM, DIM), nn.Linear(DIM, DIM), nn.Linear(DIM, DIM)
        self.table = nn.Parameter(torch.randn(2 * TOKENS - 1, HEADS) * 0.1)
        self.gate = nn.Parameter(torch.rand(HEADS) + 0.5)
        positions = torch.arange(TOKENS)
        self.register_buffer("pair_index", (positions[:, None] - positions[None, :] + TOKENS - 1).reshape(-1))
        self.out = nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, self.num_h, self.dh).transpose(1, 2) for p in (self.q, self.k, self.v))
        bias = self.table[self.pair_index].view(t, t, -1).permute(2, 0, 1).unsqueeze(0)
        heads = _attend(q, k, v, bias) * self.gate.view(1, -1, 1, 1)
        return self.out(heads.transpose(1, 2).reshape(b, t, self.num_h * self.dh))


class ReducedKVAttention(nn.Module):
    """Keys/values from a spatially reduced sequence (strided conv + LayerNorm), the PVT/SegFormer style."""

    def __init__(self, side: int = 4) -> None:
        super().__init__()
        self.side, self.h, self.hd = side, HEADS, DIM // HEADS
        self.q = nn.Linear(DIM, DIM)
        self.sr = nn.Conv2d(DIM, DIM, 2, stride=2)
        self.norm = nn.LayerNorm(DIM)
        self.kv = nn.Linear(DIM, 2 * DIM)
        self.proj = nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q(x).view(b, n, self.h, self.hd).transpose(1, 2)
        reduced = self.sr(x.transpose(1, 2).reshape(b, c, self.side, self.side)).flatten(2).transpose(1, 2)
        k, v = self.kv(self.norm(reduced)).view(b, -1, 2, self.h, self.hd).permute(2, 0, 3, 1, 4)
        return self.proj(_attend(q, k, v).transpose(1, 2).reshape(b, n, self.h * self.hd))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


class RotaryAttention(nn.Module):
    """Rotary embeddings on q and k: head_dim pairs its halves, so it must stay whole."""

    def __init__(self) -> None:
        super().__init__()
        self.heads_n, self.size = HEADS, DIM // HEADS
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(DIM, DIM, bias=False) for _ in range(4))
        angles = torch.arange(TOKENS)[:, None] * (10000 ** (-torch.arange(0, self.size, 2) / self.size))[None, :]
        angles = torch.cat((angles, angles), dim=-1)
        self.register_buffer("cos", angles.cos())
        self.register_buffer("sin", angles.sin())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (w(x).view(b, t, self.heads_n, self.size).transpose(1, 2) for w in (self.wq, self.wk, self.wv))
        q = q * self.cos + _rotate_half(q) * self.sin
        k = k * self.cos + _rotate_half(k) * self.sin
        return self.wo(_attend(q, k, v).transpose(1, 2).reshape(b, t, self.heads_n * self.size))


class Classifier(nn.Module):
    """attention -> mean over tokens -> linear; the attention's heads are the only prunable group."""

    def __init__(self, attention: nn.Module):
        super().__init__()
        self.attention = attention
        self.head = nn.Linear(DIM, 3)

    def forward(self, x: torch.Tensor, *context: torch.Tensor) -> torch.Tensor:
        return self.head(self.attention(x, *context).mean(1))


BLOCKS = {
    "fused_view": FusedViewAttention,
    "chunk_sdpa": ChunkAttention,
    "split_gqa": SplitGQAAttention,
    "cross": CrossAttention,
    "bias_table_and_gate": BiasedGatedAttention,
    "reduced_kv": ReducedKVAttention,
    "rotary": RotaryAttention,
}


def build(name: str) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """A seeded classifier around block ``name`` and its example inputs."""
    torch.manual_seed(0)
    model = Classifier(BLOCKS[name]()).eval()
    tokens = 16 if name == "reduced_kv" else TOKENS
    inputs: tuple[torch.Tensor, ...] = (torch.randn(2, tokens, DIM),)
    if name == "cross":
        inputs += (torch.randn(2, 9, 24),)
    return model, inputs
