"""Calibration windows: seeded, exact length, cut from the text, and long texts tokenized piece by piece."""

from __future__ import annotations

import pytest
import torch

from prunekit.errors import ConfigError
from prunekit.torch.llm import calibration
from prunekit.torch.llm.calibration import calibration_tokens, token_stream
from prunekit.torch.llm.small_lm import byte_tokenizer

TEXT = "".join(f"line {i}: value = {i * i}\n" for i in range(3000))


def test_windows_are_seeded_slices_of_the_token_stream():
    tokenizer = byte_tokenizer()
    stream = token_stream([TEXT], tokenizer)
    assert stream.tolist() == list(TEXT.encode())
    a = calibration_tokens([TEXT], tokenizer, n_samples=5, seq_len=64, seed=3)
    b = calibration_tokens([TEXT], tokenizer, n_samples=5, seq_len=64, seed=3)
    assert a.shape == (5, 64) and torch.equal(a, b)
    for row in a:
        assert bytes(row.tolist()).decode() in TEXT


def test_long_texts_are_tokenized_in_pieces_with_the_same_result(monkeypatch):
    tokenizer = byte_tokenizer()
    monkeypatch.setattr(calibration, "CHUNK_CHARS", 1000)
    assert token_stream([TEXT], tokenizer).tolist() == list(TEXT.encode())
    assert token_stream([TEXT], tokenizer, max_tokens=2500).tolist() == list(TEXT.encode())[:2500]
    windows = calibration_tokens([TEXT], tokenizer, n_samples=4, seq_len=32, seed=0)
    assert windows.shape == (4, 32)
    assert all(bytes(row.tolist()).decode() in TEXT for row in windows)


def test_bad_sources_are_refused():
    with pytest.raises(ConfigError, match="list of strings is empty"):
        token_stream([], byte_tokenizer())
    with pytest.raises(ConfigError, match="needs a tokenizer"):
        token_stream(["text"], None)
    with pytest.raises(ConfigError, match="integer ids"):
        token_stream(torch.zeros(3), None)
    with pytest.raises(ConfigError, match="does not exist"):
        token_stream("/nonexistent/file.txt", byte_tokenizer())
