"""train_sparse and the rigl/set methods: registry records, handlers, recipes."""

from __future__ import annotations

import pytest
import torch

from prunekit.data import load_digits
from prunekit.methods import get_method, list_methods
from prunekit.methods.run import run_method
from prunekit.recipes import RecipeError, parse_recipe
from prunekit.torch import DigitsMLP, make_loader
from prunekit.torch.unstructured.dynamic_training import train_sparse


@pytest.fixture(scope="module")
def split():
    return load_digits()


def test_rigl_and_set_are_registered_as_dynamic_methods_on_both_frameworks():
    names = [m.name for m in list_methods(kind="dynamic")]
    assert {"rigl", "set"} <= set(names)
    for name in ("rigl", "set"):
        method = get_method(name)
        assert method.kind == "dynamic" and set(method.frameworks) == {"torch", "keras"}
        assert method.options(epochs=3)["drop_fraction"] == 0.3


def test_train_sparse_from_scratch_holds_the_masks_and_logs_regrowth_per_epoch(split):
    torch.manual_seed(0)
    model = DigitsMLP()
    loader = make_loader(split.x_train, split.y_train, batch_size=64)  # 20 steps an epoch
    run = train_sparse(model, loader, 0.9, regrow="rigl", epochs=4, update_interval=5, progress=False)
    weights = [model.fc1.weight, model.fc2.weight, model.fc3.weight]
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert run.sparsity == pytest.approx(zeros / sum(w.numel() for w in weights))
    assert all(int((w != 0).sum()) <= w.numel() - round(0.9 * w.numel()) for w in weights)  # never more than the budget
    assert [r["epoch"] for r in run.history] == [1, 2, 3, 4]
    # updates every 5 steps from step 5 to before 0.75 * 80 = 60: 4 in epochs 1-2, 3 in epoch 3, none in epoch 4
    assert [r["regrown"] > 0 for r in run.history] == [True, True, True, False]
    assert run.history[3]["turnover"] == run.history[2]["turnover"] > 0
    assert type(model).__name__ == "DigitsMLP" and not hasattr(model, "weight_mask")


def test_train_sparse_from_dense_prunes_gradually_then_regrows(split):
    torch.manual_seed(0)
    loader = make_loader(split.x_train, split.y_train, batch_size=64)
    run = train_sparse(DigitsMLP(), loader, 0.8, regrow="set", epochs=4, gradual_epochs=1, update_interval=5, progress=False)
    assert run.history[0]["regrown"] == 0  # pruning to 80 % over epoch 1, regrowth from step 25
    assert run.history[1]["regrown"] > 0
    assert run.sparsity >= 0.8


def test_rigl_runs_through_the_registry_on_torch(split):
    torch.manual_seed(0)
    run = run_method("rigl", "torch", DigitsMLP(), split.x_train, split.y_train, 0.9, epochs=2, update_interval=4)
    assert run.sparsity >= 0.9 and run.history[0]["regrown"] > 0


def test_a_recipe_can_name_rigl_and_is_told_it_takes_no_importance():
    recipe = {
        "name": "dst",
        "model": {"factory": "prunekit.torch:DigitsMLP", "input_shape": [1, 8, 8]},
        "prune": {"method": "rigl", "sparsities": [0.9], "epochs": 2},
    }
    assert parse_recipe(recipe).prune.method == "rigl"
    with pytest.raises(RecipeError, match="prune.importance"):
        parse_recipe({**recipe, "prune": {**recipe["prune"], "importance": "taylor"}})
