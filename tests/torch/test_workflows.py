"""One-shot, iterative and gradual workflows reach their exact target and return a plain model."""

import pytest
import torch

from prunekit import ConfigError, IterativeSparsity
from prunekit.torch import DigitsMLP, iterative_schedule, make_loader, prune_gradually, prune_iteratively, prune_one_shot
from tests.assertions import assert_sparsity

WEIGHTS = ("fc1.weight", "fc2.weight", "fc3.weight")


@pytest.fixture
def loader():
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 1, 8, 8, generator=generator), torch.randint(0, 10, (96,), generator=generator)
    return make_loader(x, y, batch_size=16)  # 6 steps per epoch


@pytest.mark.parametrize(
    "workflow",
    [
        lambda m, loader: prune_one_shot(m, loader, 0.75, finetune_epochs=1, progress=False),
        lambda m, loader: prune_iteratively(m, loader, 0.75, rounds=3, epochs_per_round=1, progress=False),
        lambda m, loader: prune_gradually(m, loader, 0.75, epochs=3, progress=False),
    ],
    ids=["one-shot", "iterative", "gradual"],
)
def test_workflow_reaches_exact_sparsity_and_strips(workflow, loader):
    model = DigitsMLP()
    run = workflow(model, loader)
    assert run.model is model and type(model) is DigitsMLP
    assert run.sparsity == pytest.approx(0.75, abs=1e-9)
    for name in WEIGHTS:
        assert_sparsity(model.get_parameter(name), 0.75, name)


def test_iterative_schedule_removes_the_same_fraction_of_survivors_each_round():
    schedule = iterative_schedule(0.875, rounds=3, steps_per_round=10)
    assert isinstance(schedule, IterativeSparsity)
    assert [step for step, _ in schedule.milestones] == [0, 10, 20]
    assert [round(s, 12) for _, s in schedule.milestones] == [0.5, 0.75, 0.875]


def test_gradual_workflow_reports_its_polynomial_schedule(loader):
    run = prune_gradually(DigitsMLP(), loader, 0.6, epochs=3, pruning_epochs=2, frequency=3, progress=False)
    config = run.schedule.get_config()["config"]
    assert config["end_step"] == 12 and config["frequency"] == 3 and config["final_sparsity"] == 0.6


def test_gradual_workflow_refuses_training_too_short_to_prune(loader):
    with pytest.raises(ConfigError, match="leave no room for gradual pruning"):
        prune_gradually(DigitsMLP(), loader, 0.5, epochs=1, frequency=100, progress=False)


def test_workflow_options_reach_the_pruner(loader):
    model = DigitsMLP()
    prune_one_shot(model, loader, 0.5, finetune_epochs=1, exclude=["fc3"], progress=False)
    assert int((model.fc3.weight == 0).sum()) == 0
    assert_sparsity(model.fc1.weight, 0.5, "fc1")
