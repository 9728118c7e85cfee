"""Perplexity against a hand computation, per-layer sparsity, and the atomic save a plain from_pretrained loads."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from prunekit.errors import ConfigError
from prunekit.torch.llm.evaluate import layer_sparsity, model_report, perplexity
from prunekit.torch.llm.saving import RECORD_NAME, check_model_dir, load_model_dir, save_pruned
from prunekit.torch.llm.sequential import prune
from tests.torch.llm.tiny import tiny_model, tokens


def _hand_nll(model, ids: torch.Tensor) -> tuple[float, int, int]:
    with torch.no_grad():
        logits = model(ids.unsqueeze(0)).logits[0, :-1]
    logp = torch.log_softmax(logits, dim=-1)
    targets = ids[1:]
    return float(-logp.gather(1, targets.unsqueeze(1)).sum()), targets.numel(), int((logits.argmax(-1) == targets).sum())


def test_perplexity_of_one_full_window_matches_the_hand_computation():
    model = tiny_model("llama")
    ids = tokens(1, 40).reshape(-1)
    nll, count, correct = _hand_nll(model, ids)
    result = perplexity(model, ids, context=64)
    assert result.tokens == count == 39
    assert result.perplexity == pytest.approx(math.exp(nll / count), rel=1e-5)
    assert result.accuracy == correct / count


def test_sliding_window_scores_every_token_once_with_full_history_when_stride_is_one():
    model = tiny_model("gpt2")
    ids = tokens(1, 30).reshape(-1)
    full = perplexity(model, ids, context=64)
    slid = perplexity(model, ids, context=16, stride=1)
    disjoint = perplexity(model, ids, context=10)
    assert slid.tokens == full.tokens == 29
    assert disjoint.tokens == 27  # 3 windows of 10, the first token of each has no history
    # token t is scored with min(t, 15) tokens of history: recompute by hand
    nll = 0.0
    for t in range(1, 30):
        start = max(0, t - 15)
        with torch.no_grad():
            logits = model(ids[start:t].unsqueeze(0)).logits[0, -1]
        nll -= float(torch.log_softmax(logits, -1)[ids[t]])
    assert slid.nll == pytest.approx(nll, rel=1e-5)


def test_layer_sparsity_and_report_after_pruning():
    model = tiny_model("llama")
    method = __import__("prunekit.torch.llm.methods", fromlist=["wanda"]).wanda
    prune(model, tokens(), method=method, pattern="2:4", n_samples=6, seq_len=32)
    assert set(layer_sparsity(model).values()) == {0.5}
    report = model_report(model, tokens(1, 40).reshape(-1), context=32)
    assert report["block_sparsity"] == 0.5 and report["tokens"] == 38
    block_params = sum(p.numel() for n, p in model.named_parameters() if ".layers." in n and p.dim() == 2)
    assert report["params"] - report["nonzeros"] >= block_params // 2


def test_saved_directory_reloads_with_plain_from_pretrained(tmp_path):
    model = tiny_model("gpt2")
    method = __import__("prunekit.torch.llm.methods", fromlist=["sparsegpt"]).sparsegpt
    result = prune(model, tokens(), method=method, sparsity=0.5, n_samples=6, seq_len=32)
    out = save_pruned(model, tmp_path / "pruned", record=result.to_dict())
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = tokens(1, 20)
    assert torch.equal(reloaded(ids).logits, model(ids).logits)
    record = json.loads((out / RECORD_NAME).read_text())
    assert record["layers"]["transformer.h.0.mlp.c_fc"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert [p.name for p in tmp_path.iterdir()] == ["pruned"]  # no temporary left behind


def test_a_failed_save_leaves_no_output_directory(tmp_path):
    model = tiny_model("llama")

    def boom(*_a, **_k):
        raise RuntimeError("disk full")

    model.save_pretrained = boom
    with pytest.raises(RuntimeError, match="disk full"):
        save_pruned(model, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_refused_and_model_dir_is_checked(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(ConfigError, match="already exists"):
        save_pruned(tiny_model("llama"), tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="has no config.json and no weights"):
        check_model_dir(tmp_path / "empty")
    with pytest.raises(ConfigError, match="does not exist"):
        load_model_dir(tmp_path / "missing")
