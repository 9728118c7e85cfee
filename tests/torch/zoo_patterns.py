"""Small hand-written modules reproducing the attention patterns of the generated zoo's failures.

Each mirrors how a ``transformers`` family writes its attention (no class of theirs is imported):
multi-query attention whose one key/value head is never reshaped into heads (gpt_bigcode), and
LeViT's per-head split of one projection into unequal key and value sections.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tests.torch.attention_blocks import DIM, TOKENS, Classifier, _attend


def repeat_kv(states: torch.Tensor, n_rep: int) -> torch.Tensor:
    """``(b, kv, t, d)`` -> ``(b, kv * n_rep, t, d)`` by expand and reshape (the transformers helper)."""
    b, kv, t, d = states.shape
    return states[:, :, None, :, :].expand(b, kv, n_rep, t, d).reshape(b, kv * n_rep, t, d)


class MultiQueryAttention(nn.Module):
    """One projection split into ``(embed_dim, kv_dim, kv_dim)``: four query heads, one key/value head.

    ``mode`` is how the key/value head meets the queries: broadcast by ``matmul``, repeated by
    ``expand``/``reshape`` before SDPA, or SDPA's ``enable_gqa``."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode, self.embed_dim, self.num_heads, self.head_dim = mode, DIM, 4, DIM // 4
        self.kv_dim, self.groups = self.head_dim, self.num_heads
        self.c_attn = nn.Linear(DIM, self.embed_dim + 2 * self.kv_dim)
        self.c_proj = nn.Linear(self.embed_dim, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[:-1]
        q, k, v = self.c_attn(x).unsqueeze(1).split((self.embed_dim, self.kv_dim, self.kv_dim), dim=3)
        q = q.view(*shape, -1, self.head_dim).transpose(1, 2)
        if self.mode == "matmul":
            out = _attend(q, k, v)
        elif self.mode == "repeat":
            out = F.scaled_dot_product_attention(q, repeat_kv(k, self.groups), repeat_kv(v, self.groups))
        else:
            out = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        return self.c_proj(out.transpose(1, 2).reshape(*shape, -1))


class UnequalHeadSplitAttention(nn.Module):
    """LeViT's layout: ``view(b, t, heads, -1).split([key_dim, key_dim, ratio * key_dim], dim=3)``."""

    def __init__(self, heads: int) -> None:
        super().__init__()
        self.num_attention_heads, self.key_dim, self.attention_ratio = heads, 8, 2
        self.out_dim = heads * self.attention_ratio * self.key_dim
        self.qkv = nn.Linear(DIM, heads * (2 + self.attention_ratio) * self.key_dim)
        self.proj = nn.Linear(self.out_dim, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (
            self.qkv(x)
            .view(b, t, self.num_attention_heads, -1)
            .split([self.key_dim, self.key_dim, self.attention_ratio * self.key_dim], dim=3)
        )
        out = _attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(F.hardswish(out.transpose(1, 2).reshape(b, t, self.out_dim)))


def build_pattern(block: nn.Module) -> tuple[nn.Module, tuple[torch.Tensor]]:
    """A seeded eval-mode classifier around ``block`` and its example input."""
    torch.manual_seed(0)
    model = Classifier(block).eval()
    return model, (torch.randn(2, TOKENS, DIM),)


class CreatedBiasAttention(nn.Module):
    """T5's attention without a bias table: ``torch.zeros((1, n_heads, q, k))`` as the position bias."""

    def __init__(self) -> None:
        super().__init__()
        self.n_heads, self.key_value_proj_dim = 4, DIM // 4
        self.inner_dim = self.n_heads * self.key_value_proj_dim
        self.q, self.k, self.v = (nn.Linear(DIM, self.inner_dim, bias=False) for _ in range(3))
        self.o = nn.Linear(self.inner_dim, DIM, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, -1, self.key_value_proj_dim).transpose(1, 2) for p in (self.q, self.k, self.v))
        position_bias = torch.zeros((1, self.n_heads, t, t), dtype=x.dtype)
        out = _attend(q, k, v, position_bias)
        return self.o(out.transpose(1, 2).reshape(b, t, self.inner_dim))


class ExpertProjections(nn.Module):
    """Query projections whose rows are scattered back by ``index_add`` into a buffer the helper
    creates as ``torch.zeros((n, self.hidden_size))`` (jetmoe's mixture of attention experts)."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden_size = DIM
        self.linear = nn.Linear(DIM, self.hidden_size)

    def map(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        order = torch.arange(flat.shape[0] - 1, -1, -1)
        rows = self.linear(flat[order])
        return torch.zeros((flat.shape[0], self.hidden_size), dtype=rows.dtype).index_add(0, order, rows)


class HelperCreatedAttention(nn.Module):
    """The parent calls ``self.experts.map(x)`` directly, so the op runs under the parent's name; the
    parent also holds ``kv_projection_size`` of the same value, which the code never uses as a size."""

    def __init__(self) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.kv_projection_size = 4, DIM // 4, DIM
        self.experts = ExpertProjections()
        self.kv = nn.Linear(DIM, 2 * DIM)
        self.o = nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.experts.map(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        k, v = (p.view(b, t, -1, self.head_dim).transpose(1, 2) for p in self.kv(x).chunk(2, dim=-1))
        return self.o(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, -1))


class SingleHeadAttention(nn.Module):
    """pvt_v2's first stage: one head, q, k and v each viewed ``(..., num_heads, attention_head_size)``."""

    def __init__(self) -> None:
        super().__init__()
        self.num_attention_heads, self.attention_head_size = 1, DIM
        self.query, self.key, self.value = (nn.Linear(DIM, DIM) for _ in range(3))
        self.proj = nn.Linear(DIM, DIM)

    def transpose_for_scores(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.size()[:-1] + (self.num_attention_heads, self.attention_head_size)).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (self.transpose_for_scores(p(x)) for p in (self.query, self.key, self.value))
        return self.proj(_attend(q, k, v).transpose(1, 2).reshape(b, t, c))


class PartialWrites(nn.Module):
    """longformer's bookkeeping around its attention, on a projection's channels: overlapping
    chunks by ``as_strided``, rows of some tokens picked by two index tensors, and a band of tokens
    written into a created buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(DIM, DIM)
        self.out = nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x).contiguous()
        b, t, c = h.shape
        chunks = h.as_strided(size=(b, t - 2, 3, c), stride=(t * c, c, c, 1)).mean(2)  # windows of 3 tokens
        rows, cols = torch.tensor([0, 1]), torch.tensor([2, 0])
        picked = h[rows, cols]  # (2, c): two tokens' rows
        band = h.new_zeros(b, t, c)
        band[:, 1 : t - 1] = chunks
        band[rows, cols] = picked
        return self.out(band)


class EinsumHeadsAttention(nn.Module):
    """Heads the analysis does not follow (scores by ``einsum``, heads merged into the batch, as
    longformer and mra do): q, k and v are each viewed with the same ``self.head_dim``, while the
    query/key width and the value width would otherwise form groups of their own."""

    def __init__(self) -> None:
        super().__init__()
        self.num_heads, self.head_dim = 4, DIM // 4
        self.q, self.k, self.v = (nn.Linear(DIM, DIM) for _ in range(3))
        self.o = nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2) for p in (self.q, self.k, self.v))
        v = v - v.mean(-1, keepdim=True)  # the value width is centred: not an exact group alone
        q, k, v = (z.reshape(b * self.num_heads, t, -1) for z in (q, k, v))
        scores = torch.einsum("bqd,bkd->bqk", q, k).softmax(-1)
        out = torch.einsum("bqk,bkd->bqd", scores, v).reshape(b, self.num_heads, t, -1)
        return self.o(out.transpose(1, 2).reshape(b, t, -1))


class LiteralGate(nn.Module):
    """wavlm's gated position bias: a projection to 8 viewed as ``shape[:-1] + (2, 4)`` (literals)
    and summed, next to a view of the same form sized by ``self.num_heads``."""

    def __init__(self) -> None:
        super().__init__()
        self.num_heads = 4
        self.gate = nn.Linear(DIM // self.num_heads, 8)
        self.out = nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per_head = x.view(x.shape[:-1] + (self.num_heads, -1))
        gate = self.gate(per_head).view(per_head.shape[:-1] + (2, 4)).sum(-1).sigmoid().mean(-1, keepdim=True)
        return self.out((per_head * gate).flatten(2))


class TwoBranchHeads(nn.Module):
    """convbert's layout: attention heads (viewed with ``-1``) concatenated along the heads dimension
    with a second branch whose heads are merged into the rows (kept), then viewed as
    ``num_heads * head_dim * 2`` through a local ``new_shape``."""

    def __init__(self) -> None:
        super().__init__()
        self.num_heads, self.head_dim = 2, 8
        self.q, self.k, self.v, self.conv = (nn.Linear(DIM, 16) for _ in range(4))
        self.out = nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        hidden_shape = (*x.shape[:-1], -1, self.head_dim)
        q, k, v = (p(x).view(hidden_shape).transpose(1, 2) for p in (self.q, self.k, self.v))
        context = _attend(q, k, v).transpose(1, 2)
        rows = self.conv(x).reshape(-1, self.head_dim)
        rows = rows.roll(1, 0)  # moves rows across heads and tokens: the heads are positions now
        both = torch.cat([context, rows.reshape(b, -1, self.num_heads, self.head_dim)], 2)
        new_shape = both.size()[:-2] + (self.num_heads * self.head_dim * 2,)
        return self.out(both.view(*new_shape))


class EinsumScoresAttention(nn.Module):
    """longformer's attention in small: scores (``blhd,bshd->blhs``, as its global keys) and values each
    from an ``einsum``, met by a ``matmul`` whose heads cannot be followed back to the reshape that made
    them; a data-sized ``narrow`` of the tokens (its global tokens) and a ``tril`` band mask ride along."""

    def __init__(self) -> None:
        super().__init__()
        self.num_heads, self.head_dim = 4, DIM // 4
        self.q, self.k, self.v = (nn.Linear(DIM, DIM) for _ in range(3))
        self.scale = nn.Parameter(torch.ones(DIM // 4))
        self.o = nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, self.num_heads, self.head_dim) for p in (self.q, self.k, self.v))
        scores = torch.einsum("blhd,bshd->bhls", q, k)
        band = torch.ones(t, t).tril()  # a causal band, as longformer masks its windows
        probs = (scores + (band - 1) * 1e4).softmax(-1)
        values = torch.einsum("bshd,d->bhsd", v, self.scale)
        out = torch.matmul(probs, values).transpose(1, 2).reshape(b, t, -1)
        kept = (x[:, :, 0] > -1e9).sum() // b  # the token count, read from data (longformer's global tokens)
        return self.o(out.narrow(1, 0, kept))


class TrilOverChannels(nn.Module):
    """A ``tril`` whose last dimension holds a projection's channels: removing one would move the diagonal."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(DIM, DIM)
        self.out = nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.proj(x).tril())
