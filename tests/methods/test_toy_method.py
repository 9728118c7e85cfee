"""A method registered by one call runs through the Python API, a recipe, a sweep and the CLI, untouched."""

import json

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from prunekit.cli import main
from prunekit.data import load_digits
from prunekit.masks import topk_mask
from prunekit.methods import Method, PruningRun, TrainJob, register, run_method, unregister
from prunekit.recipes import parse_recipe
from prunekit.recipes.runner import run_recipe
from prunekit.sweep.digits import DigitsObjective
from prunekit.sweep.runner import Trial
from tests.assertions import assert_zero_count

CALLS: list[TrainJob] = []


def zero_smallest(job: TrainJob) -> PruningRun:
    """The toy: zero the ``amount`` smallest-|w| of every weight matrix/kernel, no training."""
    CALLS.append(job)
    with torch.no_grad():
        for parameter in job.model.parameters():
            if parameter.dim() > 1:
                parameter.mul_(torch.as_tensor(topk_mask(parameter.abs().numpy(), job.amount), dtype=parameter.dtype))
    return PruningRun(job.model, None, [], job.amount)


@pytest.fixture
def toy():
    CALLS.clear()
    method = register(
        Method(
            name="toy-zero",
            kind="unstructured",
            summary="zero the smallest weights, no training",
            handlers={"torch": zero_smallest},
            defaults={"epochs": 0, "lr": 0.0},
        )
    )
    yield method
    unregister(method.name)


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.dim() > 1]


def test_the_api_runs_it_with_its_defaults_and_the_callers_options(toy):
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    split = load_digits()
    run = run_method("toy-zero", "torch", model, split.x_train.reshape(len(split.x_train), -1), split.y_train, 0.75, lr=0.5)
    assert run.model is model and CALLS[-1].options == {"epochs": 0, "lr": 0.5} and CALLS[-1].amount == 0.75
    for weight in _weights(model):
        assert_zero_count(weight, round(0.75 * weight.numel()))


def test_a_recipe_runs_it(toy, tmp_path):
    recipe = parse_recipe(
        {
            "name": "toy",
            "model": {
                "factory": "prunekit.torch:DigitsCNN",
                "kwargs": {"channels": [4, 8], "hidden": 16},
                "input_shape": [1, 8, 8],
            },
            "train": {"epochs": 1},
            "prune": {"method": "toy-zero", "sparsities": [0.5]},
            "report": {"latency_batch_sizes": []},
        }
    )
    results = run_recipe(recipe, tmp_path)
    assert [run["method"] for run in results["runs"]] == ["toy-zero"]
    weights = sum(p.numel() for p in _weights(CALLS[-1].model))
    assert (
        results["runs"][0]["nonzeros"]
        == results["dense"]["nonzeros"] - sum(round(0.5 * p.numel()) for p in _weights(CALLS[-1].model))
        and weights > 0
    )


def test_a_sweep_runs_it(toy):
    objective = DigitsObjective.train(epochs=1, model_options={"channels": (4, 8), "hidden": 16}, latency_repeats=0)
    metrics = objective(Trial("toy-zero", 0.9))
    dense = objective(Trial("toy-zero", 0.0))
    pruned_weights = sum(p.numel() for p in _weights(objective.dense_model()))
    assert len(CALLS) == 1  # sparsity 0 is the dense model, no call
    assert dense["nonzeros"] - metrics["nonzeros"] == sum(round(0.9 * p.numel()) for p in _weights(objective.dense_model()))
    assert pruned_weights > 0


def test_the_cli_lists_it_and_runs_it_from_a_recipe(toy, tmp_path, capsys):
    assert main(["methods", "--json"]) == 0
    listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert listed["toy-zero"] == {
        "name": "toy-zero",
        "kind": "unstructured",
        "frameworks": ["torch"],
        "summary": "zero the smallest weights, no training",
        "amount": "sparsity",
        "aliases": [],
        "defaults": {"epochs": 0, "lr": 0.0},
        "by_framework": {},
        "sensitivity": [],
    }
    path = tmp_path / "toy.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "toy-cli",
                "model": {
                    "factory": "prunekit.torch:DigitsCNN",
                    "kwargs": {"channels": [4, 8], "hidden": 16},
                    "input_shape": [1, 8, 8],
                },
                "train": {"epochs": 1},
                "prune": {"method": "toy-zero", "sparsities": [0.8]},
                "report": {"latency_batch_sizes": []},
            }
        )
    )
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["runs"][0]["method"] == "toy-zero" and len(CALLS) == 1
    assert np.isclose(CALLS[0].amount, 0.8)


def test_a_recipe_refuses_an_option_the_method_does_not_take(toy):
    from prunekit.recipes import RecipeError

    with pytest.raises(RecipeError, match=r"prune.scope: method 'toy-zero' takes no 'scope'; its options are \['epochs', 'lr'\]"):
        parse_recipe(
            {
                "name": "x",
                "model": {"factory": "prunekit.torch:DigitsCNN", "input_shape": [1, 8, 8]},
                "prune": {"method": "toy-zero", "scope": "layer"},
            }
        )
