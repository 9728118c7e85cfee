"""The sequential block-by-block driver on tiny random transformers of several families."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.torch.llm.discovery import find_decoder_stack, set_weight_matrix, weight_matrix
from prunekit.torch.llm.methods import LayerTask, magnitude, sparsegpt, wanda
from prunekit.torch.llm.sequential import prune
from prunekit.torch.llm.statistics import InputStatistics
from tests.torch.llm.tiny import FAMILIES, tiny_model, tokens

EXPECTED_PATHS = {
    "llama": "model.layers",
    "gpt2": "transformer.h",
    "opt": "model.decoder.layers",
    "gpt_neox": "gpt_neox.layers",
    "qwen2": "model.layers",
    "mistral": "model.layers",
    "phi3": "model.layers",
    "gemma": "model.layers",
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_discovery_finds_every_family_s_blocks_and_projections(family):
    model = tiny_model(family)
    stack = find_decoder_stack(model)
    assert stack.path == EXPECTED_PATHS[family] and len(stack.blocks) == 2
    covered = sum(
        weight_matrix(m).numel()
        for n, m in model.named_modules()
        if n in set(stack.projection_names(0) + stack.projection_names(1))
    )
    linear_in_blocks = sum(p.numel() for n, p in stack.blocks.named_parameters() if p.dim() == 2)
    assert covered == linear_in_blocks  # every matrix of the blocks is a found projection


def test_discovery_error_lists_what_was_seen():
    model = nn.Sequential(nn.Linear(4, 4), nn.ModuleList([nn.ReLU(), nn.ReLU()]))
    with pytest.raises(ConfigError, match=r"seen: 1 \(2 x ReLU"):
        find_decoder_stack(model)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("method", [wanda, sparsegpt])
def test_every_family_is_pruned_to_exact_row_sparsity_and_still_runs(family, method):
    model = tiny_model(family)
    result = prune(model, tokens(), method=method, sparsity=0.5, n_samples=6, seq_len=32, batch_size=4, comparison="row")
    assert set(result.achieved.values()) == {0.5}
    assert result.sparsity == 0.5
    logits = model(tokens(1)).logits
    assert torch.isfinite(logits).all()


def _reference_all_in_memory(model: nn.Module, ids: torch.Tensor, method, sparsity: float, pattern=None) -> None:
    """Prune block by block with the whole calibration batch in one full-model forward per block (no capture)."""
    stack = find_decoder_stack(model)
    modules = dict(model.named_modules())
    for index in range(len(stack.blocks)):
        stats: dict[str, InputStatistics] = {}
        handles = []
        for name in stack.projection_names(index):
            module = modules[name]
            stats[name] = InputStatistics(weight_matrix(module).shape[1], hessian=True)
            handles.append(module.register_forward_pre_hook(lambda _m, a, s=stats[name]: s.add(a[0])))
        with torch.no_grad():
            model(ids)
        for handle in handles:
            handle.remove()
        for name in stack.projection_names(index):
            module = modules[name]
            task = LayerTask(name, weight_matrix(module).detach().float(), stats[name], sparsity, pattern=pattern)
            pruned = method(task)
            set_weight_matrix(module, pruned)


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt"])
@pytest.mark.parametrize("method", [wanda, sparsegpt])
def test_layer_by_layer_equals_all_activations_in_memory(family, method):
    ids = tokens(6, 32)
    sequential = tiny_model(family, num_hidden_layers=3) if family != "gpt2" else tiny_model(family, n_layer=3)
    reference = tiny_model(family, num_hidden_layers=3) if family != "gpt2" else tiny_model(family, n_layer=3)
    prune(sequential, ids, method=method, sparsity=0.5, n_samples=6, seq_len=32, batch_size=4)
    _reference_all_in_memory(reference, ids, method, 0.5)
    for (name, a), (_, b) in zip(sequential.named_parameters(), reference.named_parameters(), strict=True):
        assert torch.equal(a == 0, b == 0), name
        assert torch.allclose(a, b, atol=1e-5), name


def test_skip_globs_leave_blocks_dense_and_ratios_set_per_layer_targets():
    model = tiny_model("llama")
    before = {n: p.clone() for n, p in model.named_parameters()}
    result = prune(
        model,
        tokens(),
        method=wanda,
        sparsity=0.5,
        n_samples=6,
        seq_len=32,
        skip=["model.layers.0", "*.down_proj"],
        ratios={"*.mlp.*": 0.75},
    )
    params = dict(model.named_parameters())
    for name, value in before.items():
        if name.startswith("model.layers.0.") or "down_proj" in name:
            assert torch.equal(params[name], value), name
    assert result.achieved["model.layers.1.mlp.up_proj"] == 0.75
    assert result.achieved["model.layers.1.self_attn.q_proj"] == 0.5
    assert not any(n.startswith("model.layers.0.") for n in result.achieved)
    assert set(result.targets) == set(result.achieved)  # a target for every pruned projection, none for skipped ones
    assert {v for n, v in result.targets.items() if ".mlp." in n} == {0.75}
    assert {v for n, v in result.targets.items() if ".self_attn." in n} == {0.5}


def test_owl_keeps_the_mean_block_sparsity_and_spreads_it():
    model = tiny_model("llama", num_hidden_layers=4)
    result = prune(model, tokens(8, 32), method=wanda, sparsity=0.7, ratios="owl", n_samples=8, seq_len=32, owl_threshold=2.0)
    per_block = [result.targets[f"model.layers.{i}.mlp.up_proj"] for i in range(4)]
    assert sum(per_block) / 4 == pytest.approx(0.7, abs=1e-9)
    assert max(per_block) - min(per_block) == pytest.approx(0.16, abs=1e-9)


def test_magnitude_needs_no_calibration():
    model = tiny_model("gpt2")
    result = prune(model, method=magnitude, sparsity=0.25)
    assert result.sparsity == pytest.approx(0.25, abs=1e-3) and result.recipe["n_samples"] == 0


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(sparsity=1.0), r"sparsity must be in \[0, 1\)"),
        (dict(sparsity=-0.1), r"sparsity must be in \[0, 1\)"),
        (dict(pattern="2:3"), r"does not divide layer 'model.layers.0.self_attn.q_proj'"),
        (dict(device="cuda"), "no CUDA GPU"),
        (dict(seq_len=1000, calibration=tokens(1, 20).reshape(-1)), "shorter than one sequence"),
        (dict(calibration=torch.full((2, 32), 500)), "vocabulary has 96 entries"),
        (dict(skip=["nothing.*"]), "skip glob 'nothing.*' matches no module"),
        (dict(ratios={"*.nope": 0.3}), "matches no prunable projection"),
        (dict(ratios="owl", pattern="2:4"), "N:M pattern fixes"),
    ],
)
def test_bad_input_is_refused_before_any_work(kwargs, message):
    if kwargs.get("device") == "cuda" and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    model = tiny_model("llama")
    before = {n: p.clone() for n, p in model.named_parameters()}
    args = {"calibration": tokens(), "method": wanda, "n_samples": 6, "seq_len": 32, **kwargs}
    with pytest.raises(ConfigError, match=message):
        prune(model, **args)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
