"""Recipes: typed validation reporting every bad field at once, the shipped demo recipe, `prunekit run`."""

import json

import pytest
import yaml

from prunekit.cli import main
from prunekit.errors import ConfigError
from prunekit.recipes import RecipeError, builtin_recipe_text, load_recipe, parse_recipe
from prunekit.recipes.validation import to_plain


@pytest.fixture
def one_torch_thread():
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


TINY = {
    "name": "tiny",
    "model": {"factory": "prunekit.torch:DigitsCNN", "kwargs": {"channels": [4, 8], "hidden": 16}, "input_shape": [1, 8, 8]},
    "train": {"epochs": 1},
    "prune": {"method": "one-shot", "sparsities": [0.5, 0.8], "epochs": 1},
    "report": {"latency_batch_sizes": [1], "sensitivity_ratios": [0.5, 0.9]},
    "allocate": {"budget": 0.4, "target": "macs"},
}


def test_shipped_demo_recipe_is_valid_and_matches_the_demo():
    recipe = parse_recipe(yaml.safe_load(builtin_recipe_text("demo")))
    assert recipe.model.factory == "prunekit.torch:DigitsCNN"
    assert recipe.prune.method == "gradual"
    assert recipe.prune.sparsities == [0.5, 0.8, 0.9]


def test_every_bad_field_is_reported_in_one_error_with_its_path():
    bad = {
        "name": 3,
        "modle": {},
        "model": {"factory": "no_such_package.models:Net", "input_shape": [1, 0]},
        "prune": {"method": "gradul", "sparsities": [0.5, "x"], "epochs": 0, "scope": "global"},
        "export": {"int8": True},
    }
    with pytest.raises(RecipeError) as caught:
        parse_recipe(bad)
    paths = [path for path, _ in caught.value.errors]
    assert paths == [
        "modle",
        "name",
        "model.factory",
        "model.input_shape",
        "prune.method",
        "prune.sparsities[1]",
        "prune.epochs",
        "export.int8",
    ]
    message = str(caught.value)
    assert "8 error(s)" in message
    assert "did you mean 'model'" in message and "did you mean 'gradual'" in message
    assert "module 'no_such_package.models' is not trusted" in message


def test_missing_required_fields_are_named():
    with pytest.raises(RecipeError) as caught:
        parse_recipe({"model": {"input_shape": [1, 8, 8]}})
    assert [p for p, _ in caught.value.errors] == ["name", "model.factory"]


def test_an_import_path_to_a_missing_attribute_is_reported():
    with pytest.raises(RecipeError, match="model.factory: module 'prunekit.torch' has no attribute 'NoSuchNet'"):
        parse_recipe({"name": "x", "model": {"factory": "prunekit.torch:NoSuchNet", "input_shape": [1, 8, 8]}})


def test_allocation_without_sensitivity_ratios_is_an_error():
    with pytest.raises(RecipeError, match="allocate: allocation chooses ratios from sensitivity data"):
        parse_recipe(
            {"name": "x", "model": {"factory": "prunekit.torch:DigitsCNN", "input_shape": [1, 8, 8]}, "allocate": {"budget": 0.3}}
        )


def test_integers_are_accepted_where_numbers_are_expected():
    recipe = parse_recipe(
        {"name": "x", "model": {"factory": "prunekit.torch:DigitsCNN", "input_shape": [1, 8, 8]}, "train": {"lr": 1}}
    )
    assert recipe.train.lr == 1.0 and isinstance(recipe.train.lr, float)


def test_recipe_round_trips_through_plain_data():
    recipe = parse_recipe(TINY)
    assert parse_recipe(to_plain(recipe)) == recipe


def test_load_recipe_names_a_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")


def test_run_command_reports_all_recipe_errors_and_exits_2(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: x\nmodel: {factory: 'prunekit.torch:DigitsCNN', input_shape: [1, 8, 8]}\nprune: {sparsities: [1.5], lr: -1}\n"
    )
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "prune.sparsities: every sparsity should be in [0, 1), got [1.5]" in err
    assert "prune.lr: should be > 0" in err


def test_run_command_runs_a_recipe_and_writes_results_and_report(tmp_path, one_torch_thread):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [run["target"] for run in results["runs"]] == [0.5, 0.8]
    assert results["runs"][1]["nonzeros"] < results["runs"][0]["nonzeros"] < results["dense"]["nonzeros"]
    assert list(results["sensitivity"]["scores"]) == ["conv1", "conv2", "fc1", "fc2"]
    assert [row["method"] for row in results["allocation"]] == ["sensitivity", "uniform", "global", "search"]
    assert all(abs(row["cost_fraction"] - 0.4) < 0.008 for row in results["allocation"])
    sparse = results["runs"][1]["sparse_runtime"]  # 80 % sparse: the sparse CPU kernels were measured per layer
    assert sparse["batch_size"] == 1 and [layer["name"] for layer in sparse["layers"]] == ["conv1", "conv2", "fc1", "fc2"]
    assert all(
        layer["sparse"] == (layer["sparse_ms"] is not None and layer["sparse_ms"] < layer["dense_ms"])
        for layer in sparse["layers"]
    )
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4  # sparsity, MACs, Pareto, sensitivity
    assert "Sparse CPU runtime" in html
    assert "name: tiny" in html  # the exact recipe
    assert json.loads((out / "report.json").read_text())["recipe"] == path.read_text()


def test_a_latency_budget_without_channel_removal_is_a_field_error():
    with pytest.raises(RecipeError) as caught:
        parse_recipe({**TINY, "allocate": {"budget": 0.5, "target": "latency"}})
    assert caught.value.errors == [
        (
            "allocate.target",
            "a latency budget needs channel removal (zeroed weights do not "
            "make dense kernels faster); set allocate.pruning: channels",
        )
    ]
    recipe = parse_recipe({**TINY, "allocate": {"budget": 0.5, "target": "latency", "pruning": "channels"}})
    assert recipe.allocate.pruning == "channels" and recipe.allocate.batch_size == 64


def test_run_with_channel_allocation_measures_channel_sensitivity_and_meets_the_budget(tmp_path, one_torch_thread):
    import torch

    from prunekit.recipes.runner import run_recipe
    from prunekit.torch import DigitsCNN
    from prunekit.torch.measure.macs import count_macs
    from prunekit.torch.tradeoffs.structured_allocation import apply_channel_ratios

    recipe = parse_recipe(
        {
            **TINY,
            "prune": {"method": "channels", "sparsities": [0.5], "epochs": 1},
            "report": {"latency_batch_sizes": [], "sensitivity_ratios": [0.25, 0.5, 0.75]},
            "allocate": {"budget": 0.5, "target": "macs", "pruning": "channels", "batch_size": 8},
        }
    )
    results = run_recipe(recipe, tmp_path)
    assert list(results["channel_sensitivity"]["scores"]) == ["conv1", "conv2", "fc1"]
    assert [row["method"] for row in results["allocation"]] == ["sensitivity", "uniform", "global"]
    model = DigitsCNN(channels=[4, 8], hidden=16)
    example = torch.zeros(8, 1, 8, 8)
    for row in results["allocation"]:
        smaller = apply_channel_ratios(model, example, row["ratios"])
        assert count_macs(smaller, example).total / count_macs(model, example).total == pytest.approx(row["cost_fraction"])
        assert 0.4 <= row["cost_fraction"] <= 0.5  # 4 and 8 channels: coarse steps
    assert (tmp_path / "report.html").read_text().count("data:image/png;base64,") == 5  # both heat-maps


def test_demo_print_recipe_prints_the_shipped_recipe_and_runs_nothing(capsys):
    assert main(["demo", "--print-recipe"]) == 0
    printed = capsys.readouterr().out
    assert printed == builtin_recipe_text("demo")
    assert parse_recipe(yaml.safe_load(printed)).name == "digits-demo"
