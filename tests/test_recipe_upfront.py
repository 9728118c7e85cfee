"""Recipe checks that used to pass `--check` and fail late (or with a traceback): all caught up front, with the field path."""

import copy

import pytest
import yaml

from prunekit.cli import main
from prunekit.errors import ConfigError
from prunekit.recipes import RecipeError, load_recipe, parse_recipe
from prunekit.schedules import PolynomialDecay

TINY = {
    "name": "tiny",
    "model": {"factory": "prunekit.torch:DigitsCNN", "kwargs": {"channels": [4, 8], "hidden": 16}, "input_shape": [1, 8, 8]},
    "train": {"epochs": 1},
    "prune": {"method": "one-shot", "sparsities": [0.5], "epochs": 1},
}


def with_changes(**sections):
    recipe = copy.deepcopy(TINY)
    for key, value in sections.items():
        if isinstance(value, dict):
            recipe.setdefault(key, {}).update(value)
        else:
            recipe[key] = value
    return recipe


def errors_of(data):
    with pytest.raises(RecipeError) as caught:
        parse_recipe(data)
    return dict(caught.value.errors)


def check(tmp_path, capsys, data):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    code = main(["run", str(path), "--check"])
    return code, capsys.readouterr()


def test_negative_and_zero_latency_batch_sizes_are_field_errors():
    assert "prune" not in errors_of(with_changes(report={"latency_batch_sizes": [0, -3]}))
    assert "[0, -3]" in errors_of(with_changes(report={"latency_batch_sizes": [0, -3]}))["report.latency_batch_sizes"]


def test_infinite_learning_rate_and_huge_seed_are_field_errors():
    errors = errors_of(with_changes(train={"lr": float("inf")}, seed=10**29))
    assert "finite" in errors["train.lr"]
    assert "2**32" in errors["seed"]


def test_final_sparsity_below_initial_is_refused():
    with pytest.raises(ConfigError, match=r"final_sparsity \(0.5\) should be >= initial_sparsity \(0.8\)"):
        PolynomialDecay(0.8, 0.5, begin_step=0, end_step=100)


def test_duplicate_yaml_keys_are_an_error_naming_both_lines(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("name: a\nname: b\nmodel: {factory: 'prunekit.torch:DigitsCNN', input_shape: [1, 8, 8]}\n")
    with pytest.raises(ConfigError, match=r"key 'name' is given twice \(lines 1 and 2\)"):
        load_recipe(path)


def test_a_non_utf8_file_is_a_config_error(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 9\)"):
        load_recipe(path)


def test_check_refuses_an_exclude_glob_that_matches_nothing(tmp_path, capsys):
    code, out = check(tmp_path, capsys, with_changes(prune={"exclude": ["encoder.*"]}))
    assert code == 2
    assert "prune.exclude: glob 'encoder.*' matches no layer of the model" in out.err


def test_check_refuses_an_input_shape_the_model_cannot_take(tmp_path, capsys):
    code, out = check(tmp_path, capsys, with_changes(model={"input_shape": [3, 5, 5]}))
    assert code == 2
    assert "model.input_shape: [3, 5, 5] does not fit the model" in out.err


def test_check_passes_a_recipe_that_fits_its_model(tmp_path, capsys):
    code, out = check(tmp_path, capsys, with_changes(prune={"exclude": ["conv1"]}))
    assert code == 0, out.err
    assert "valid recipe 'tiny'" in out.out
