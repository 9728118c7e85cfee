"""Calibration tokens for one-shot LLM pruning: ``n_samples`` windows of ``seq_len`` tokens, seeded.

A source is a text file (path), a list of strings, or token ids (a list of ints or a 1-D tensor:
a stream to cut windows from; or a 2-D ``[n, L]`` tensor used as it is).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Union

import torch

from prunekit.errors import ConfigError

CalibrationSource = Union[str, os.PathLike, Sequence[str], torch.Tensor]


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens, from a ``transformers`` tokenizer or a plain callable ``str -> ids``."""
    if tokenizer is None:
        raise ConfigError("text calibration data needs a tokenizer: pass tokenizer= (or token ids instead of text)")
    if hasattr(tokenizer, "encode"):
        try:
            return list(tokenizer.encode(text, add_special_tokens=False))
        except TypeError:  # an encode() without the transformers keyword
            return list(tokenizer.encode(text))
    return list(tokenizer(text))


def read_text(path: str | os.PathLike) -> str:
    """The text of a UTF-8 file, with a clear error when it is missing or empty."""
    if isinstance(path, str) and ("\n" in path or len(path) > 4096):
        raise ConfigError("a str is read as a file path; pass raw text as a list of strings, e.g. [text]")
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"calibration/evaluation text file {str(file)!r} does not exist; pass a path to a UTF-8 text file")
    text = file.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise ConfigError(f"text file {str(file)!r} is empty; it needs at least one sequence of text")
    return text


CHUNK_CHARS = 1_000_000
"""Long texts are tokenized in pieces of about this many characters (cut at a newline), so memory stays bounded."""


def _source_text(source: CalibrationSource) -> str | None:
    if isinstance(source, (str, os.PathLike)):
        return read_text(source)
    if (
        isinstance(source, Sequence)
        and not isinstance(source, torch.Tensor)
        and source
        and all(isinstance(item, str) for item in source)
    ):
        return "\n\n".join(source)
    if isinstance(source, Sequence) and not isinstance(source, torch.Tensor) and not source:
        raise ConfigError("calibration list of strings is empty")
    return None


def _encode_prefix(tokenizer: Any, text: str, max_tokens: int | None) -> list[int]:
    """Token ids of ``text`` (or of its start, once ``max_tokens`` are reached), tokenized piece by piece."""
    ids: list[int] = []
    start = 0
    while start < len(text) and (max_tokens is None or len(ids) < max_tokens):
        end = len(text) if len(text) - start <= CHUNK_CHARS else text.find("\n", start + CHUNK_CHARS) + 1 or len(text)
        ids.extend(encode(tokenizer, text[start:end]))
        start = end
    return ids if max_tokens is None else ids[:max_tokens]


def token_stream(source: CalibrationSource, tokenizer: Any = None, max_tokens: int | None = None) -> torch.Tensor:
    """The source as one 1-D ``long`` token stream (a 2-D tensor is flattened row by row), cut to ``max_tokens``.

    Example::

        token_stream(["def f():", "    return 1"], tokenizer)
    """
    if isinstance(source, torch.Tensor):
        if source.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ConfigError(f"calibration token tensor must hold integer ids, got dtype {source.dtype}")
        return source.reshape(-1).long()[:max_tokens]
    text = _source_text(source)
    if text is not None:
        return torch.tensor(_encode_prefix(tokenizer, text, max_tokens), dtype=torch.long)
    if isinstance(source, Sequence) and source and all(isinstance(item, int) for item in source):
        return torch.tensor(list(source), dtype=torch.long)[:max_tokens]
    raise ConfigError(
        f"calibration source must be a text file path, a list of strings or a token tensor, got {type(source).__name__}"
    )


def _windows_from_text(text: str, tokenizer: Any, n_samples: int, seq_len: int, seed: int) -> torch.Tensor | None:
    """Windows cut from pieces of a long text at seeded random character offsets (``None`` if a piece runs short)."""
    generator = torch.Generator().manual_seed(seed)
    span = seq_len * 16
    if len(text) < 4 * span:
        return None
    rows = []
    for _ in range(n_samples):
        offset = int(torch.randint(0, len(text) - span, (1,), generator=generator))
        ids = encode(tokenizer, text[offset : offset + span])
        if len(ids) < seq_len:
            return None
        rows.append(torch.tensor(ids[:seq_len], dtype=torch.long))
    return torch.stack(rows)


def calibration_tokens(
    source: CalibrationSource,
    tokenizer: Any = None,
    *,
    n_samples: int = 128,
    seq_len: int = 2048,
    seed: int = 0,
    vocab_size: int | None = None,
) -> torch.Tensor:
    """``[n_samples, seq_len]`` token windows drawn at seeded random offsets from ``source``.

    A 2-D tensor source with ``seq_len`` columns is used as it is (its first ``n_samples`` rows).
    Raises :class:`~prunekit.errors.ConfigError` when the source is shorter than one window or
    holds ids outside ``vocab_size``.

    Example::

        tokens = calibration_tokens("train.txt", tokenizer, n_samples=32, seq_len=512, seed=0)
    """
    if n_samples < 1 or seq_len < 2:
        raise ConfigError(f"calibration needs n_samples >= 1 and seq_len >= 2, got n_samples={n_samples}, seq_len={seq_len}")
    if isinstance(source, torch.Tensor) and source.dim() == 2 and source.shape[1] == seq_len:
        tokens = source[:n_samples].long()
    else:
        text = _source_text(source)
        if text is not None and len(text) > CHUNK_CHARS:  # a long text: tokenize only the sampled pieces
            tokens = _windows_from_text(text, tokenizer, n_samples, seq_len, seed)
            if tokens is not None:
                _check_vocab(tokens, vocab_size, "calibration")
                return tokens
        stream = token_stream(source, tokenizer)
        if stream.numel() < seq_len:
            raise ConfigError(
                f"calibration data holds {stream.numel()} tokens, shorter than one sequence of seq_len={seq_len}; "
                "give more text or a smaller seq_len"
            )
        generator = torch.Generator().manual_seed(seed)
        starts = torch.randint(0, stream.numel() - seq_len + 1, (n_samples,), generator=generator)
        tokens = torch.stack([stream[int(s) : int(s) + seq_len] for s in starts])
    _check_vocab(tokens, vocab_size, "calibration")
    return tokens


def _check_vocab(tokens: torch.Tensor, vocab_size: int | None, what: str) -> None:
    if vocab_size is None or tokens.numel() == 0:
        return
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= vocab_size:
        raise ConfigError(
            f"{what} token ids span [{low}, {high}] but the model's vocabulary has {vocab_size} entries: "
            "the tokenizer does not belong to this model"
        )


TokenizerLike = Callable[[str], Sequence[int]]
