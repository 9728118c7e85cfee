"""Activation sparsity: calibrated thresholds zero the target fraction of inputs, and the kernels skip exactly those."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from prunekit.errors import ConfigError
from prunekit.torch.deploy.sparse import (
    ActivationSparseLinear,
    ActivationThresholds,
    activation_sparsity_report,
    apply_activation_sparsity,
    calibrate_activation_sparsity,
    kernels,
)
from prunekit.torch.deploy.sparse.allocation import GRID, greedy_allocation
from tests.torch.llm.tiny import tiny_model, tokens


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 64)
        self.classifier = nn.Linear(64, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.relu(self.fc2(torch.tanh(self.fc1(x)))))


def thresholded_reference(model: nn.Module, thresholds: ActivationThresholds) -> nn.Module:
    """The dense model with each listed layer's input entries scored below its threshold set to zero (by hooks):
    the score is ``|x_j|``, times the weight's column norm ``||W[:, j]||`` for ``score="column_norm"``."""

    def zero_small(threshold: float, scale: torch.Tensor):  # type: ignore[no-untyped-def]
        return lambda module, args: (torch.where(args[0].abs() * scale < threshold, torch.zeros(()), args[0]),)

    for name, threshold in thresholds.values.items():
        layer = model.get_submodule(name)
        scale = layer.weight.detach().norm(dim=0) if thresholds.score == "column_norm" else torch.ones(())
        layer.register_forward_pre_hook(zero_small(threshold, scale))
    return model


@pytest.fixture(params=[True, False], ids=["numba", "torch-fallback"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    if request.param and not kernels.HAVE_NUMBA:
        pytest.skip("numba not installed")
    monkeypatch.setattr(kernels, "HAVE_NUMBA", request.param)
    return bool(request.param)


def test_calibration_hits_the_target_fraction_per_layer() -> None:
    torch.manual_seed(0)
    model = MLP().eval()
    batches = [torch.randn(64, 32) for _ in range(4)]
    thresholds = calibrate_activation_sparsity(model, batches, target=0.4)
    assert set(thresholds.values) == {"fc1", "fc2"}  # the classifier is excluded by default
    fast = apply_activation_sparsity(model, thresholds)
    for batch in batches:
        fast(batch)
    achieved = activation_sparsity_report(fast, reset=True)
    assert achieved["fc1"] == pytest.approx(0.4, abs=0.01)
    # fc2's input is relu output: half of it is already zero, so the threshold is 0 and nothing more is dropped
    assert achieved["fc2"] >= 0.4
    assert activation_sparsity_report(fast) == {"fc1": 0.0, "fc2": 0.0}


@pytest.mark.parametrize("tokens_", [1, 3, 8])
def test_skipping_kernels_equal_dense_on_thresholded_inputs(backend: bool, tokens_: int) -> None:
    torch.manual_seed(1)
    model = MLP().eval()
    with torch.no_grad():
        model.fc2.weight[torch.rand_like(model.fc2.weight) < 0.8] = 0.0  # combined with weight sparsity
    thresholds = calibrate_activation_sparsity(model, [torch.randn(32, 32)], target=0.5, rescale=False)
    fast = apply_activation_sparsity(model, thresholds)
    assert fast.fc2.csc is not None and fast.fc1.csc is None  # the pruned weight keeps only its nonzeros
    reference = thresholded_reference(copy.deepcopy(model), thresholds)
    x = torch.randn(tokens_, 32)
    expected = reference(x).detach()
    torch.testing.assert_close(fast(x), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("tokens_", [1, 4])
@pytest.mark.parametrize("n_out", [37, 200])  # neither a multiple of the 16-float slices nor of the 8 rows summed at once
def test_row_gathering_kernel_equals_dense_on_scaled_thresholded_inputs(
    backend: bool, monkeypatch: pytest.MonkeyPatch, threads: int, tokens_: int, n_out: int
) -> None:
    monkeypatch.setattr(kernels, "PARALLEL_MIN_WORK", 0)  # split even a tiny layer over the threads
    generator = torch.Generator().manual_seed(tokens_ * 1000 + n_out)
    weight_t = torch.randn(61, n_out, generator=generator)  # (in, out): the transposed weight
    x = torch.randn(tokens_, 61, generator=generator)
    scale = torch.rand(61, generator=generator) + 0.5
    bias = torch.randn(n_out, generator=generator)
    scored = x * scale
    kept = torch.where(scored.abs() < 0.6, torch.zeros(()), scored)
    expected = kept.double() @ weight_t.double() + bias.double()
    previous = torch.get_num_threads()
    kernels.set_threads(threads)
    try:
        y, survived = kernels.dense_skip_matmul(x, weight_t.numpy(), 0.6, bias.numpy(), scale.numpy())
    finally:
        kernels.set_threads(previous)
    assert survived == int((kept != 0).sum()) and 0 < survived < x.numel()
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


def pruned_tiny_llama(weight_sparsity: float) -> nn.Module:
    """The tiny LLaMA with every decoder Linear magnitude-pruned to ``weight_sparsity`` (per layer)."""
    model = tiny_model("llama")
    with torch.no_grad():
        for name, module in model.named_modules():
            if type(module) is nn.Linear and name != "lm_head" and weight_sparsity > 0:
                cut = module.weight.abs().flatten().kthvalue(int(weight_sparsity * module.weight.numel())).values
                module.weight[module.weight.abs() <= cut] = 0.0
    return model


@pytest.mark.parametrize("weight_sparsity", [0.0, 0.7])
def test_activation_sparse_llm_generates_like_the_thresholded_dense_model(weight_sparsity: float) -> None:
    model = pruned_tiny_llama(weight_sparsity)
    calibration = [tokens(4, 32, seed=s) for s in range(2)]
    thresholds = calibrate_activation_sparsity(model, calibration, target=0.5, rescale=False)
    assert "lm_head" not in thresholds.values and "model.layers.0.mlp.down_proj" in thresholds.values
    assert "model.layers.1.self_attn.q_proj" in thresholds.values
    fast = apply_activation_sparsity(model, thresholds)
    up_proj = fast.model.layers[0].mlp.up_proj
    assert isinstance(up_proj, ActivationSparseLinear) and (up_proj.csc is not None) == (weight_sparsity > 0)
    reference = thresholded_reference(pruned_tiny_llama(weight_sparsity), thresholds)
    prompt = tokens(1, 8, seed=5)
    settings = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
    generated = fast.generate(prompt, **settings)
    assert torch.equal(generated, reference.generate(prompt, **settings))
    achieved = activation_sparsity_report(fast)
    assert all(0.2 < value < 0.8 for value in achieved.values())


@pytest.mark.parametrize("target", [1.0, -0.1, 1.5])
def test_target_outside_zero_one_is_refused(target: float) -> None:
    with pytest.raises(ConfigError, match=r"target activation sparsity should be in \[0, 1\)"):
        calibrate_activation_sparsity(MLP(), [torch.randn(2, 32)], target=target)


def test_calibration_batch_of_the_wrong_shape_is_named() -> None:
    with pytest.raises(ConfigError, match=r"calibration batch 1 \(shape \[2, 31\]\) does not fit the model"):
        calibrate_activation_sparsity(MLP(), [torch.randn(2, 32), torch.randn(2, 31)], target=0.5)


def test_no_calibration_batches_is_refused() -> None:
    with pytest.raises(ConfigError, match="at least one calibration batch"):
        calibrate_activation_sparsity(MLP(), [], target=0.5)


def test_weight_sparse_llm_generates_exactly_like_the_pruned_model() -> None:
    from prunekit.torch.deploy.sparse import SparseLinear, sparsify

    model = pruned_tiny_llama(0.7)
    fast, report = sparsify(model, tokens(1, 8, seed=3), force=True, repeats=1)
    sparse_layers = {c.name for c in report.layers if c.sparse}
    assert "model.layers.0.mlp.down_proj" in sparse_layers and "lm_head" not in sparse_layers  # lm_head is dense
    assert isinstance(fast.model.layers[1].self_attn.q_proj, SparseLinear)
    prompt = tokens(1, 8, seed=5)
    settings = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert torch.equal(fast.generate(prompt, **settings), model.generate(prompt, **settings))


def test_greedy_allocation_spends_the_budget_where_error_is_cheapest() -> None:
    levels = (0.0, *GRID)
    errors = {"steep": [10 * s for s in levels], "flat": [0.01 * s for s in levels]}
    chosen = greedy_allocation(errors, {"steep": 1000, "flat": 1000}, target=0.5)
    assert chosen == pytest.approx({"steep": 0.05, "flat": 0.95})
    # weighted by size: a layer three times larger moves the mean three times as much
    chosen = greedy_allocation(errors, {"steep": 3000, "flat": 1000}, target=0.5)
    assert 3 * chosen["steep"] + chosen["flat"] == pytest.approx(4 * 0.5)
    assert chosen["flat"] == pytest.approx(0.95)


class TwoBranch(nn.Module):
    """Output = a(x) + 0.01 b(x): zeroing a's inputs moves the output 100x more than zeroing b's."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(32, 16)
        self.b = nn.Linear(32, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) + 0.01 * self.b(x)


def test_greedy_calibration_sparsifies_the_insensitive_layer_and_loses_less() -> None:
    torch.manual_seed(5)
    model = TwoBranch().eval()
    batches = [torch.randn(64, 32) for _ in range(2)]
    uniform = calibrate_activation_sparsity(model, batches, target=0.5, rescale=False)
    greedy = calibrate_activation_sparsity(model, batches, target=0.5, allocation="greedy", rescale=False)
    assert uniform.sparsities == {"a": 0.5, "b": 0.5} and greedy.allocation == "greedy"
    assert greedy.sparsities["b"] == pytest.approx(0.95) and greedy.sparsities["a"] == pytest.approx(0.05)
    assert greedy.to_json()["sparsities"] == greedy.sparsities
    x = torch.randn(256, 32)
    expected = model(x).detach()

    def error(thresholds: ActivationThresholds) -> float:
        fast = apply_activation_sparsity(model, thresholds)
        return float((fast(x) - expected).square().sum() / expected.square().sum())

    fast = apply_activation_sparsity(model, greedy)
    fast(x)
    achieved = activation_sparsity_report(fast)
    assert (achieved["a"] + achieved["b"]) / 2 == pytest.approx(0.5, abs=0.05)  # equal sizes: the plain mean
    assert error(greedy) < 0.25 * error(uniform)


def test_unknown_allocation_is_refused() -> None:
    with pytest.raises(ConfigError, match="allocation should be one of"):
        calibrate_activation_sparsity(MLP(), [torch.randn(4, 32)], allocation="best")


def test_greedy_calibration_of_a_causal_lm_meets_the_weighted_target() -> None:
    model = pruned_tiny_llama(0.0)
    layers = ["model.layers.0.mlp.*"]  # three layers keep the search short: it runs the model once per layer and grid point
    thresholds = calibrate_activation_sparsity(model, [tokens(2, 16, seed=1)], target=0.5, include=layers, allocation="greedy")
    sizes = {name: model.get_submodule(name).weight.numel() for name in thresholds.sparsities}
    weighted = sum(thresholds.sparsities[name] * size for name, size in sizes.items()) / sum(sizes.values())
    assert weighted == pytest.approx(0.5) and set(thresholds.values) == set(sizes)
    assert len(set(thresholds.sparsities.values())) > 1  # the layers got different fractions


@given(
    st.lists(st.integers(1, 5000), min_size=1, max_size=6),
    st.floats(0.0, 0.99),
    st.integers(0, 2**16),
)
@settings(max_examples=60, deadline=None)
def test_greedy_allocation_never_exceeds_the_target_mean(sizes: list[int], target: float, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    levels = len(GRID) + 1
    errors = {f"l{i}": torch.rand(levels, generator=generator).cumsum(0).tolist() for i in range(len(sizes))}
    for curve in errors.values():
        curve[0] = 0.0
    weights = {f"l{i}": size for i, size in enumerate(sizes)}
    chosen = greedy_allocation(errors, weights, target)
    mean = sum(chosen[name] * weights[name] for name in weights) / sum(weights.values())
    assert mean <= target + 1e-9
    assert all(0.0 <= value <= GRID[-1] for value in chosen.values())
    if target <= GRID[-1]:  # reachable: the budget is spent exactly
        assert mean == pytest.approx(target, abs=1e-9)


def test_column_norm_scores_keep_the_inputs_with_the_largest_reach() -> None:
    torch.manual_seed(7)
    layer = nn.Linear(16, 8)
    with torch.no_grad():
        layer.weight.mul_(torch.linspace(0.1, 3.0, 16))  # column j's norm grows with j
    model = nn.Sequential(layer).eval()
    thresholds = calibrate_activation_sparsity(model, [torch.randn(256, 16)], target=0.5, score="column_norm", rescale=False)
    assert thresholds.score == "column_norm" and thresholds.to_json()["score"] == "column_norm"
    fast = apply_activation_sparsity(model, thresholds)
    x = torch.randn(1, 16)
    reach = x.abs()[0] * layer.weight.detach().norm(dim=0)
    kept = reach >= thresholds.values["0"]
    assert 0 < int(kept.sum()) < 16
    # the kept inputs are exactly the top entries by |x_j| * ||W[:, j]||, not by |x_j|
    assert set(reach.argsort(descending=True)[: int(kept.sum())].tolist()) == set(torch.nonzero(kept)[:, 0].tolist())
    expected = layer(torch.where(kept, x, torch.zeros(()))).detach()
    torch.testing.assert_close(fast(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("score", ["magnitude", "column_norm"])
def test_a_threshold_calibrated_for_half_zeroes_half_of_the_calibration_entries(score: str) -> None:
    torch.manual_seed(3)
    model = MLP().eval()
    batches = [torch.randn(128, 32) for _ in range(3)]
    fast = apply_activation_sparsity(model, calibrate_activation_sparsity(model, batches, target=0.5, score=score))
    for batch in batches:
        fast(batch)
    assert activation_sparsity_report(fast)["fc1"] == pytest.approx(0.5, abs=0.02)


def test_unknown_score_is_refused() -> None:
    with pytest.raises(ConfigError, match="score should be one of"):
        calibrate_activation_sparsity(MLP(), [torch.randn(4, 32)], score="wina")
