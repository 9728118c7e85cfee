"""`prunekit demo --print-recipe` prints the recipe the flags would run, and every such recipe validates."""

import pytest
import yaml

from prunekit.cli import main
from prunekit.methods import FRAMEWORKS, TRAINING_KINDS, list_methods
from prunekit.recipes import builtin_recipe_text, parse_recipe
from prunekit.recipes.demo_recipe import demo_recipe_text


def printed_recipe(capsys, *flags):
    assert main(["demo", "--print-recipe", *flags]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_structured_demo_prints_the_channel_method_its_ratios_and_only_its_options(capsys):
    recipe = printed_recipe(capsys, "--method", "structured")
    assert recipe["prune"]["method"] == "channels"
    assert recipe["prune"]["sparsities"] == [0.25, 0.5]
    assert set(recipe["prune"]) == {"method", "sparsities", "epochs", "lr"}  # channels takes no scope/importance/exclude
    assert recipe["prune"]["epochs"] == 4  # the method's default, which the demo runs with
    assert parse_recipe(recipe).prune.method == "channels"


def test_keras_quick_demo_with_recovery_prints_that_recipe(capsys):
    recipe = printed_recipe(
        capsys, "--framework", "keras", "--quick", "--recover", "finetune", "--seed", "7", "--sparsities", "0.6"
    )
    assert recipe["framework"] == "keras"
    assert recipe["seed"] == 7
    assert recipe["train"]["epochs"] == 4 and recipe["prune"]["epochs"] == 3
    assert recipe["prune"]["sparsities"] == [0.6]
    assert recipe["recover"] == {"method": "finetune", "epochs": 3}
    assert parse_recipe(recipe).recover.method == "finetune"


def test_print_recipe_refuses_all_methods_with_a_hint(capsys):
    assert main(["demo", "--print-recipe", "--method", "all"]) == 2
    assert "--method NAME" in capsys.readouterr().err


def test_default_demo_recipe_is_the_shipped_file():
    assert demo_recipe_text("torch") == builtin_recipe_text("demo")


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_every_training_method_gives_a_valid_recipe(framework):
    for method in list_methods(kind=TRAINING_KINDS, framework=framework):
        data = yaml.safe_load(demo_recipe_text(framework, method.name, [0.5]))
        assert parse_recipe(data).prune.method == method.name
