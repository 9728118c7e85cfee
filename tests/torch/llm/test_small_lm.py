"""The small LM's training is a fixed number of seeded steps: the same config builds the same model."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file

from prunekit.torch.llm.small_lm import SmallLMConfig, train_small_lm

MICRO = SmallLMConfig(hidden=32, intermediate=64, layers=2, heads=2, context=32, steps=4, batch=4, warmup=2, max_bytes=200_000)


def test_training_is_deterministic_and_runs_every_step(tmp_path: Path) -> None:
    first = train_small_lm(tmp_path / "a", MICRO, log=None)
    second = train_small_lm(tmp_path / "b", MICRO, log=None)
    weights_a, weights_b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert json.loads((first / "training.json").read_text())["steps_done"] == MICRO.steps


def test_max_seconds_stops_early_and_records_the_steps_done(tmp_path: Path) -> None:
    directory = train_small_lm(tmp_path / "c", replace(MICRO, steps=1000, max_seconds=0.0), log=None)
    assert json.loads((directory / "training.json").read_text())["steps_done"] == 0
