"""Group importance criteria: values checked against direct computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.torch import analyze_dependencies, prune_channels
from prunekit.torch.structured.importance import (
    ActivationImportance,
    BNScaleImportance,
    MagnitudeImportance,
    RandomImportance,
    TaylorImportance,
)
from tests.torch.structured_helpers import one_torch_thread  # noqa: F401  (autouse: one torch thread per test)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean((2, 3)))


def net() -> Net:
    torch.manual_seed(0)
    model = Net().eval()
    with torch.no_grad():
        model.bn1.weight.uniform_(0.2, 2.0)
        model.bn1.bias.uniform_(-0.5, 0.5)
    return model


X = torch.randn(8, 2, 6, 6, generator=torch.Generator().manual_seed(3))
Y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])


def conv1_group(model: Net):
    graph = analyze_dependencies(model, X)
    return graph.group("conv1")


def test_l1_sums_absolute_weights_over_every_parameter_slice_of_the_group():
    model = net()
    expected = (
        model.conv1.weight.abs().sum((1, 2, 3))
        + model.conv1.bias.abs()
        + model.bn1.weight.abs()
        + model.bn1.bias.abs()
        + model.conv2.weight.abs().sum((0, 2, 3))
    )
    np.testing.assert_allclose(MagnitudeImportance(1)(conv1_group(model)), expected.detach().numpy(), rtol=1e-6)


def test_l2_is_the_root_of_summed_squares_over_the_group():
    model = net()
    squares = (
        model.conv1.weight.pow(2).sum((1, 2, 3))
        + model.conv1.bias.pow(2)
        + model.bn1.weight.pow(2)
        + model.bn1.bias.pow(2)
        + model.conv2.weight.pow(2).sum((0, 2, 3))
    )
    np.testing.assert_allclose(MagnitudeImportance(2)(conv1_group(model)), squares.sqrt().detach().numpy(), rtol=1e-6)


def test_random_importance_is_seeded_per_group():
    group = conv1_group(net())
    first, again, other = RandomImportance(1)(group), RandomImportance(1)(group), RandomImportance(2)(group)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert first.shape == (6,) and ((first >= 0) & (first < 1)).all()


def test_taylor_is_the_square_of_summed_weight_times_gradient_per_channel():
    model = net()
    loss = nn.functional.cross_entropy(model(X), Y)
    grads = torch.autograd.grad(
        loss, [model.conv1.weight, model.conv1.bias, model.bn1.weight, model.bn1.bias, model.conv2.weight]
    )
    w = [model.conv1.weight, model.conv1.bias, model.bn1.weight, model.bn1.bias, model.conv2.weight]
    per_channel = (
        (w[0] * grads[0]).sum((1, 2, 3)) + w[1] * grads[1] + w[2] * grads[2] + w[3] * grads[3] + (w[4] * grads[4]).sum((0, 2, 3))
    )
    scores = TaylorImportance([(X, Y)])(conv1_group(model))
    np.testing.assert_allclose(scores, per_channel.pow(2).detach().numpy(), rtol=1e-4, atol=1e-12)


def test_taylor_restores_the_models_own_gradients():
    model = net()
    marker = torch.full_like(model.conv1.weight, 7.0)
    model.conv1.weight.grad = marker
    TaylorImportance([(X, Y)])(conv1_group(model))
    assert model.conv1.weight.grad is marker
    assert model.fc.weight.grad is None


def test_taylor_and_activation_need_calibration_batches():
    for name in ("taylor", "activation", "apoz"):
        with pytest.raises(ConfigError, match=f"importance='{name}' needs calibration"):
            prune_channels(net(), X, 0.5, importance=name)


def test_bn_scale_scores_are_the_absolute_batchnorm_weights():
    model = net()
    with torch.no_grad():
        model.bn1.weight[2] = -3.0
    np.testing.assert_allclose(BNScaleImportance()(conv1_group(model)), model.bn1.weight.abs().detach().numpy())


def test_bn_scale_falls_back_to_l1_for_groups_without_normalisation_and_says_so():
    model = net()
    importance = BNScaleImportance()
    group = analyze_dependencies(model, X).group("conv2")
    np.testing.assert_allclose(importance(group), MagnitudeImportance(1)(group))
    assert importance.notes == ["bn_scale: group 'conv2' has no normalisation layer; scored by L1 magnitude"]


def _relu1_output(model: Net, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.relu(model.bn1(model.conv1(x)))


def test_activation_importance_is_the_mean_absolute_activation_after_the_relu():
    model = net()
    batches = [X[:4], X[4:]]
    expected = np.mean([_relu1_output(model, b).abs().mean((0, 2, 3)).numpy() for b in batches], axis=0)
    np.testing.assert_allclose(ActivationImportance(batches)(conv1_group(model)), expected, rtol=1e-6)


def test_apoz_importance_is_one_minus_the_fraction_of_zeros():
    model = net()
    expected = 1.0 - (_relu1_output(model, X) == 0).double().mean((0, 2, 3)).numpy()
    np.testing.assert_allclose(ActivationImportance([(X, Y)], statistic="apoz")(conv1_group(model)), expected)


def test_a_callable_importance_decides_which_channels_go():
    result = prune_channels(net(), X, 0.5, importance=lambda group: -np.arange(group.size, dtype=float))
    assert result.removed == {"conv1": [3, 4, 5], "conv2": [2, 3]}


def test_importance_with_the_wrong_number_of_scores_raises_naming_the_group():
    with pytest.raises(ConfigError, match="group 'conv1' returned 2 scores; it has 6 channels"):
        prune_channels(net(), X, 0.5, importance=lambda group: np.ones(2))


def test_importance_returning_nan_raises():
    with pytest.raises(ConfigError, match="NaN"):
        prune_channels(net(), X, 0.5, importance=lambda group: np.full(group.size, np.nan))


def test_unknown_importance_name_lists_the_choices():
    with pytest.raises(ConfigError, match="'l1', 'l2', 'random', 'taylor', 'bn_scale', 'activation', 'apoz'"):
        prune_channels(net(), X, 0.5, importance="l3")


def test_taylor_pruning_runs_end_to_end_through_prune_channels():
    result = prune_channels(net(), X, 0.5, importance="taylor", calibration=[(X, Y)])
    assert (result.model.conv1.out_channels, result.model.conv2.out_channels) == (3, 2)
