"""A tiny byte-level Llama trained for seconds on stdlib text, shared by the tests that need a trained model."""

from __future__ import annotations

from pathlib import Path

import pytest

from prunekit.torch.llm.small_lm import SmallLMConfig, train_small_lm

TINY_TRAINING = SmallLMConfig(
    hidden=64, intermediate=128, layers=2, heads=4, context=64, steps=150, batch=16, lr=1e-2, max_seconds=600.0, max_bytes=400_000
)


@pytest.fixture(scope="session")
def trained_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A save_pretrained directory (model, byte tokenizer, train.txt, valid.txt) of a tiny LM trained for seconds."""
    return train_small_lm(tmp_path_factory.mktemp("lm") / "tiny-lm", TINY_TRAINING, log=None)
