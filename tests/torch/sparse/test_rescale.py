"""``rescale=True``: one least-squares scale per activation-sparse layer, folded into its weight."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.torch.deploy.sparse import apply_activation_sparsity, calibrate_activation_sparsity


def tanh_mlp() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 16)).eval()


def test_rescale_fits_the_least_squares_scale_of_the_kept_output() -> None:
    model = tanh_mlp()
    batches = [torch.randn(128, 32) for _ in range(2)]
    thresholds = calibrate_activation_sparsity(model, batches, target=0.5, rescale=True)
    weight = model[2].weight.detach()
    with torch.no_grad():
        x = torch.cat([torch.tanh(model[0](batch)) for batch in batches])
    kept = torch.where(x.abs() * weight.norm(dim=0) < thresholds.values["2"], torch.zeros(()), x)
    dense, sparse = x @ weight.T, kept @ weight.T
    expected = float((dense * sparse).sum() / sparse.square().sum())
    assert thresholds.output_scales["2"] == pytest.approx(expected, rel=1e-4)
    assert expected > 1.0  # the kept part is shorter than the whole
    assert thresholds.to_json()["output_scales"] == thresholds.output_scales


def test_rescaled_layers_compute_the_scaled_kept_product_plus_the_bias() -> None:
    model = tanh_mlp()
    batches = [torch.randn(128, 32)]
    thresholds = calibrate_activation_sparsity(model, batches, target=0.5, rescale=True)
    plain = apply_activation_sparsity(model, calibrate_activation_sparsity(model, batches, target=0.5, rescale=False))
    fast = apply_activation_sparsity(model, thresholds)
    x = torch.randn(3, 32)
    with torch.no_grad():
        hidden = torch.tanh(fast[0](x))
        unscaled = plain[2](hidden) - model[2].bias
        expected = thresholds.output_scales["2"] * unscaled + model[2].bias
        torch.testing.assert_close(fast[2](hidden), expected, rtol=1e-5, atol=1e-5)


def test_rescale_lowers_a_layers_output_error_on_the_calibration_batches() -> None:
    model = tanh_mlp()
    batches = [torch.randn(256, 32)]
    with torch.no_grad():
        reference = model(batches[0])

        def error(rescale: bool) -> float:
            thresholds = calibrate_activation_sparsity(model, batches, target=0.6, include=["2"], rescale=rescale)
            moved = apply_activation_sparsity(model, thresholds)(batches[0]) - reference
            return float(moved.square().sum() / reference.square().sum())

        assert error(True) < error(False)


def test_rescale_at_zero_sparsity_keeps_every_scale_at_one_and_the_outputs_dense() -> None:
    model = tanh_mlp()
    thresholds = calibrate_activation_sparsity(model, [torch.randn(64, 32)], target=0.0, rescale=True)
    assert thresholds.output_scales == {"0": 1.0, "2": 1.0}
    x = torch.randn(5, 32)
    with torch.no_grad():
        torch.testing.assert_close(apply_activation_sparsity(model, thresholds)(x), model(x), rtol=1e-5, atol=1e-6)


def test_without_rescale_no_scales_are_recorded() -> None:
    thresholds = calibrate_activation_sparsity(tanh_mlp(), [torch.randn(64, 32)], target=0.5, rescale=False)
    assert thresholds.output_scales == {}
