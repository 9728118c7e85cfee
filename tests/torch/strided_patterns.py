"""Small hand-written attention modules whose heads travel through the ops longformer uses.

Each keeps its heads in a tensor that no reshape made: a buffer the keys are written into
(``buf[:, 1:-1] = k``, ``index_put_``, ``slice_scatter``, ``copy_`` into a slice), a sliding
window of keys (``unfold``, ``as_strided``) scored by ``einsum``, a ``diagonal`` of scores; and one
whose heads come from ``torch.stack`` of per-head projections, which the analysis cannot follow.
No class of ``transformers`` is imported.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tests.torch.attention_blocks import DIM

HEADS, HEAD_DIM, WINDOW = 4, DIM // 4, 3


class BufferWriteAttention(nn.Module):
    """Keys written into a zero buffer one token wider on each side (heads as in ``k``), then
    scored against the queries by ``matmul``; ``mode`` is how they are written."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode, self.num_heads, self.head_dim = mode, HEADS, HEAD_DIM
        self.q, self.k, self.v = (nn.Linear(DIM, DIM) for _ in range(3))
        self.o = nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, self.num_heads, self.head_dim) for p in (self.q, self.k, self.v))
        buf = k.new_zeros(b, t + 2, self.num_heads, self.head_dim)
        if self.mode == "setitem":
            buf[:, 1:-1] = k
        elif self.mode == "index_put":
            rows = torch.arange(b)[:, None].expand(b, t)
            cols = torch.arange(1, t + 1)[None, :].expand(b, t)
            buf.index_put_((rows, cols), k)
        elif self.mode == "slice_scatter":
            buf = torch.slice_scatter(buf, k, dim=1, start=1, end=t + 1)
        else:
            buf[:, 1:-1].copy_(k)
        scores = q.transpose(1, 2) @ buf.permute(0, 2, 3, 1) / self.head_dim**0.5  # (b, h, t, t + 2)
        out = scores.softmax(-1)[..., 1:-1] @ v.transpose(1, 2)
        return self.o(out.transpose(1, 2).reshape(b, t, -1))


class WindowedAttention(nn.Module):
    """Each token attends to a window of ``WINDOW`` keys around it, cut from the padded keys and
    values by ``unfold`` or ``as_strided`` and scored by ``einsum`` (heads kept in dimension 1);
    with ``mode="diagonal"`` the token's own score is read off the full score matrix's diagonal."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode, self.num_heads, self.head_dim = mode, HEADS, HEAD_DIM
        self.q, self.k, self.v = (nn.Linear(DIM, DIM) for _ in range(3))
        self.o = nn.Linear(DIM, DIM)

    def _windows(self, states: torch.Tensor) -> torch.Tensor:
        """``(b, h, t, d)`` -> ``(b, h, t, d, WINDOW)``: the padded states around each token."""
        b, h, t, d = states.shape
        padded = F.pad(states, (0, 0, WINDOW // 2, WINDOW // 2))
        if self.mode == "as_strided":
            s = padded.stride()
            return padded.as_strided((b, h, t, d, WINDOW), (s[0], s[1], s[2], s[3], s[2]))
        return padded.unfold(2, WINDOW, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2) for p in (self.q, self.k, self.v))
        scores = torch.einsum("bhtd,bhtdw->bhtw", q, self._windows(k))
        if self.mode == "diagonal":
            own = (q @ k.transpose(-1, -2)).diagonal(dim1=-2, dim2=-1)  # (b, h, t)
            scores = scores + own.unsqueeze(-1)
        probs = (scores / self.head_dim**0.5).softmax(-1)
        out = torch.einsum("bhtw,bhtdw->bhtd", probs, self._windows(v))
        return self.o(out.transpose(1, 2).reshape(b, t, -1))


class StackedHeadsAttention(nn.Module):
    """Heads made by ``torch.stack`` of per-head projections: no reshape splits a projection into
    heads, so the walk back from the products stops at the stack and every head is kept."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = (nn.ModuleList(nn.Linear(DIM, HEAD_DIM) for _ in range(HEADS)) for _ in range(3))
        self.o = nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (torch.stack([p(x) for p in projections], dim=1) for projections in (self.q, self.k, self.v))
        out = (q @ k.transpose(-1, -2)).softmax(-1) @ v
        return self.o(out.transpose(1, 2).reshape(b, t, -1))
