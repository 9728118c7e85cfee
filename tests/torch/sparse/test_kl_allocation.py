"""``allocation="kl"``: per-layer activation sparsity grown on the whole model's KL from the dense one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.torch.deploy.sparse import activation_sparsity_report, apply_activation_sparsity, calibrate_activation_sparsity
from prunekit.torch.deploy.sparse.kl_allocation import MAX_SPARSITY
from tests.torch.llm.tiny import tiny_model, tokens
from tests.torch.sparse.test_activation_sparsity import TwoBranch


def weighted_mean(model: nn.Module, sparsities: dict[str, float]) -> float:
    sizes = {name: model.get_submodule(name).weight.numel() for name in sparsities}
    return sum(sparsities[name] * size for name, size in sizes.items()) / sum(sizes.values())


@pytest.mark.parametrize("target", [0.3, 0.5, 0.73])
def test_kl_allocation_skips_exactly_the_target_share_of_weight_elements(target: float) -> None:
    model = tiny_model("llama")
    thresholds = calibrate_activation_sparsity(model, [tokens(2, 16, seed=1)], target=target, allocation="kl")
    sizes = {name: model.get_submodule(name).weight.numel() for name in thresholds.sparsities}
    skipped = sum(thresholds.sparsities[name] * size for name, size in sizes.items())
    assert skipped == pytest.approx(target * sum(sizes.values()), abs=0.5)  # to the element
    assert all(0.0 <= value <= MAX_SPARSITY for value in thresholds.sparsities.values())
    assert len(set(thresholds.sparsities.values())) > 2  # the layers got different fractions


def test_kl_allocation_records_each_layers_fraction_in_the_thresholds() -> None:
    model = tiny_model("llama")
    thresholds = calibrate_activation_sparsity(model, [tokens(2, 16, seed=1)], target=0.5, allocation="kl")
    assert thresholds.allocation == "kl"
    assert set(thresholds.sparsities) == set(thresholds.values)
    assert "model.layers.0.self_attn.q_proj" in thresholds.sparsities and "lm_head" not in thresholds.sparsities
    assert thresholds.to_json()["sparsities"] == thresholds.sparsities
    assert weighted_mean(model, thresholds.sparsities) == pytest.approx(0.5)


def test_kl_allocation_at_zero_sparsity_leaves_the_outputs_dense() -> None:
    model = tiny_model("llama")
    thresholds = calibrate_activation_sparsity(model, [tokens(2, 16, seed=1)], target=0.0, allocation="kl")
    assert set(thresholds.sparsities.values()) == {0.0} and set(thresholds.values.values()) == {0.0}
    fast = apply_activation_sparsity(model, thresholds)
    prompt = tokens(1, 12, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(fast(prompt).logits, model(prompt).logits, rtol=1e-5, atol=1e-5)
    assert set(activation_sparsity_report(fast).values()) == {0.0}


def test_kl_allocation_keeps_the_layer_the_output_depends_on_dense() -> None:
    torch.manual_seed(5)
    model = TwoBranch().eval()
    batches = [torch.randn(64, 32) for _ in range(2)]
    chosen = calibrate_activation_sparsity(model, batches, target=0.45, allocation="kl").sparsities
    assert chosen["a"] + chosen["b"] == pytest.approx(0.9)
    assert chosen["b"] >= 2 * chosen["a"]


def test_kl_allocation_loses_less_than_uniform_on_a_causal_lm() -> None:
    model = tiny_model("llama")
    calibration = [tokens(4, 32, seed=s) for s in range(2)]
    held_out = tokens(4, 32, seed=9)
    with torch.no_grad():
        reference = torch.log_softmax(model(held_out).logits, -1)

        def kl(allocation: str) -> float:
            thresholds = calibrate_activation_sparsity(model, calibration, target=0.5, allocation=allocation)
            sparse = torch.log_softmax(apply_activation_sparsity(model, thresholds)(held_out).logits, -1)
            return float((reference.exp() * (reference - sparse)).sum(-1).mean())

        assert kl("kl") < kl("uniform")
