"""A schedule that never reaches its target warns at the end of fit() and in strip(), naming the schedule and steps."""

import warnings

import pytest
import torch

from prunekit.errors import SparsityWarning
from prunekit.schedules import ConstantSparsity, PolynomialDecay
from prunekit.torch import Pruner, prune_unstructured
from prunekit.torch.training import fit, make_loader


def tiny_run(schedule, epochs=1):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    pruner = Pruner(model, schedule)
    loader = make_loader(torch.randn(64, 4), torch.randint(0, 2, (64,)), batch_size=16)  # 4 steps per epoch
    return pruner, lambda: fit(model, loader, epochs=epochs, pruner=pruner, progress=False)


def test_begin_step_never_reached_warns_at_the_end_of_fit_naming_schedule_and_steps():
    pruner, train = tiny_run(PolynomialDecay(0.0, 0.8, begin_step=100, end_step=200))
    with pytest.warns(SparsityWarning) as caught:
        train()
    message = str(caught[0].message)
    assert "sparsity is 0.0% after 4 pruner step(s)" in message
    assert "PolynomialDecay(" in message and "targets 80.0%" in message
    assert "begin_step=100 was never reached" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pruner.strip()  # warned once per pruner


def test_strip_before_the_schedule_ends_warns():
    pruner, _ = tiny_run(ConstantSparsity(0.5, begin_step=10))
    with pytest.warns(SparsityWarning, match=r"strip: sparsity is 0\.0% after 0 pruner step"):
        pruner.strip()


def test_a_schedule_that_reaches_its_target_is_silent():
    pruner, train = tiny_run(PolynomialDecay(0.0, 0.75, begin_step=0, end_step=3, frequency=1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train()
        pruner.strip()
    assert sum((p == 0).sum().item() for n, p in pruner.model.named_parameters() if n.endswith("weight")) == 36  # 75% of 48


def test_a_layer_too_small_for_the_target_is_no_shortfall():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2, bias=False))  # 6 weights: 90% is 5 zeros, 83.3%
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stripped = prune_unstructured(model, 0.9)
    assert int((stripped[0].weight == 0).sum()) == 5
