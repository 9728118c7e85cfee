"""Up-front checks of the device and of the memory a sequential pruning run will need."""

from __future__ import annotations

import os

import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.torch.llm.discovery import DecoderStack, weight_matrix
from prunekit.torch.llm.experts import stacked_matrices
from prunekit.torch.llm.statistics import statistics_bytes


def resolve_device(device: str | torch.device | None) -> torch.device | None:
    """The device blocks are moved to while pruned (``None``: where the model is); ``cuda`` without a GPU is an error.

    Example::

        resolve_device("cpu")  # device(type='cpu')
    """
    if device is None:
        return None
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' was asked for but no CUDA GPU is available to torch; use device='cpu'")
    return resolved


def model_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers."""
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def available_bytes(device: torch.device | None) -> int | None:
    """Free memory on ``device`` (GPU: ``mem_get_info``; CPU: ``MemAvailable`` of /proc/meminfo), ``None`` if unknown."""
    if device is not None and device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


# The estimated transient intermediates of one batch may take this share of the model's bytes.
# With freed tensors given back (prunekit.core.allocator.return_large_frees) each extra 512-token
# sequence of GPT-2 small adds 30 MiB of peak RSS (the estimate counts 36): at 32 x 512 a sixth gives
# 2 sequences per call, Wanda / SparseGPT peaking at 1.24x / 1.29x the model; 3 sequences (a quarter)
# would give 1.31x / 1.36x, over the 1.3 (measured 2026-12-08, docs/llm.md).
TRANSIENT_SHARE = 1 / 6
# ... but never less than this (a small model's memory is small anyway; its speed is not) ...
MIN_TRANSIENT_BYTES = 64 * 2**20
# ... and a batch need not exceed this many tokens: the block's matmuls run at full speed by then.
MAX_BATCH_TOKENS = 2048


def _projection_shapes(stack: DecoderStack) -> list[torch.Size]:
    """The (out, in) shapes of the first block's projections."""
    return [weight_matrix(m).shape for name, m in stack.blocks[0].named_modules() if name in stack.projections[0]]


def _widths(model: nn.Module, stack: DecoderStack) -> tuple[int, int, int]:
    """``(hidden, heads, widest projection side)`` from the config and the first block's projections."""
    config = getattr(model, "config", None)
    hidden = int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0) or 0)
    heads = int(getattr(config, "num_attention_heads", 0) or getattr(config, "n_head", 0) or 1)
    widest = max((max(s) for s in _projection_shapes(stack)), default=hidden)
    return hidden or widest, heads, widest


def transient_bytes_per_sequence(model: nn.Module, stack: DecoderStack, seq_len: int) -> int:
    """Bytes one calibration sequence adds while a block runs: attention scores and four widest-projection buffers (float32).

    Example::

        transient_bytes_per_sequence(model, find_decoder_stack(model), 512)
    """
    _, heads, widest = _widths(model, stack)
    return seq_len * (heads * seq_len + 4 * widest) * 4


def default_batch_size(model: nn.Module, stack: DecoderStack, n_samples: int, seq_len: int) -> int:
    """Calibration sequences per block call: the most whose transient intermediates fit the budget.

    The budget is ``TRANSIENT_SHARE`` of the model's bytes (at least ``MIN_TRANSIENT_BYTES``), so
    the memory a run adds stays proportional to the model, while a batch of up to
    ``MAX_BATCH_TOKENS`` tokens keeps the matmuls large enough to run at full speed: a small
    model gets the full batch, a model whose sequences are long beside its size gets fewer
    sequences per call (at least one).

    Example::

        default_batch_size(model, find_decoder_stack(model), n_samples=32, seq_len=512)  # 2 for GPT-2 small
    """
    budget = max(TRANSIENT_SHARE * model_bytes(model), MIN_TRANSIENT_BYTES)
    fits = int(budget // max(1, transient_bytes_per_sequence(model, stack, seq_len)))
    return max(1, min(n_samples, fits, MAX_BATCH_TOKENS // max(1, seq_len)))


def estimate_bytes(
    model: nn.Module, stack: DecoderStack, shape: tuple[int, int], batch_size: int, *, hessian: bool, experts: bool = False
) -> dict[str, int]:
    """Estimated bytes of a run: calibration activations, one batch's block intermediates, one block's statistics
    as the collector allocates them (with ``hessian``, only the upper ``x x^T`` blocks of wide inputs; with
    ``experts``, also one block's per-expert statistics of fused expert tensors).

    Example::

        estimate_bytes(model, stack, (128, 2048), 4, hessian=True)["activations"]
    """
    n, length = shape
    hidden, _, _ = _widths(model, stack)
    widths = _projection_shapes(stack)
    activations = n * length * hidden * 4
    intermediates = batch_size * transient_bytes_per_sequence(model, stack, length)
    stats = sum(statistics_bytes(s[1], hessian) for s in widths)
    if experts:
        stats += expert_statistics_bytes(stack, hessian=hessian)
    return {"activations": activations, "intermediates": intermediates, "statistics": stats}


def expert_statistics_bytes(stack: DecoderStack, *, hessian: bool) -> int:
    """The most bytes one block's per-expert statistics may take: for each 3-D parameter ``[E, a, b]``, ``E``
    statistics of the side whose statistics are larger (with Hessians ``a^2`` or ``b^2`` floats, fewer where wide
    inputs keep only the upper blocks), whichever side turns out the input.

    Example::

        expert_statistics_bytes(stack, hessian=True)
    """
    largest = 0
    for block in stack.blocks:
        per_expert = [
            (p.shape[0], max(statistics_bytes(side, hessian) for side in p.shape[1:]))
            for p in block.parameters()
            if stacked_matrices(p)
        ]
        largest = max(largest, sum(e * size for e, size in per_expert))
    return largest


def check_memory(
    model: nn.Module,
    stack: DecoderStack,
    shape: tuple[int, int],
    batch_size: int,
    *,
    hessian: bool,
    device: torch.device | None,
    experts: bool = False,
) -> dict[str, int]:
    """Raise a :class:`ConfigError` with settings that would fit when the run's estimate exceeds free memory.

    Set ``PRUNEKIT_SKIP_MEMORY_CHECK=1`` to skip the check.
    """
    parts = estimate_bytes(model, stack, shape, batch_size, hessian=hessian, experts=experts)
    if os.environ.get("PRUNEKIT_SKIP_MEMORY_CHECK"):
        return parts
    free = available_bytes(device)
    need = sum(parts.values())
    if device is not None and device.type == "cuda":
        block = max(sum(p.numel() * p.element_size() for p in b.parameters()) for b in stack.blocks)
        need += block
    if free is None or need <= free:
        return parts
    n, length = shape
    per_sample = max(1, parts["activations"] // n)
    fit = max(0, (free - parts["statistics"] - parts["intermediates"]) // per_sample)
    raise ConfigError(
        f"calibration of {n} x {length} tokens needs about {need / 2**30:.2f} GiB "
        f"(activations {parts['activations'] / 2**30:.2f}, one batch's intermediates {parts['intermediates'] / 2**30:.2f}, "
        f"statistics {parts['statistics'] / 2**30:.2f}) but only {free / 2**30:.2f} GiB is free; "
        f"use n_samples <= {fit} or a smaller seq_len / batch_size"
    )
