"""Recipes run a recovery step after pruning and report before/after, and show dynamic-sparsity turnover."""

import numpy as np

from prunekit.artifacts.onnx_artifact import onnx_accuracy
from prunekit.data import load_digits
from prunekit.recipes import RecipeError, parse_recipe
from prunekit.recipes.runner import run_recipe

BASE = {
    "name": "tiny-recover",
    "model": {"factory": "prunekit.torch:DigitsCNN", "kwargs": {"channels": [4, 8], "hidden": 16}, "input_shape": [1, 8, 8]},
    "train": {"epochs": 2},
    "prune": {"method": "one-shot", "sparsities": [0.8], "epochs": 1},
    "report": {"latency_batch_sizes": []},
}


def test_a_distillation_step_runs_after_pruning_and_the_report_shows_both_accuracies(tmp_path):
    results = run_recipe(parse_recipe({**BASE, "recover": {"method": "distill", "epochs": 1}}), tmp_path)
    run = results["runs"][0]
    assert run["recover"]["method"] == "distill" and 0 < run["recover"]["accuracy_before"] <= 1
    assert run["recover"]["artifact"] is None
    assert run["sparsity"] > 0.75  # the zeros of pruning stay zero through distillation
    markdown = (tmp_path / "report.md").read_text()
    assert "before recovery" in markdown and "one-shot 80% + distill" in markdown


def test_pqat_writes_an_int8_onnx_file_that_keeps_the_accuracy(tmp_path):
    results = run_recipe(parse_recipe({**BASE, "recover": {"method": "pqat", "epochs": 1}}), tmp_path)
    run = results["runs"][0]
    artifact = run["recover"]["artifact"]
    assert artifact is not None and artifact.endswith("pruned-0.8.pqat.int8.onnx")
    split = load_digits()
    assert abs(onnx_accuracy(artifact, split.x_test, split.y_test) - run["accuracy"]) <= 0.02


def test_a_recover_section_is_validated_against_the_method():
    try:
        parse_recipe({**BASE, "recover": {"method": "distil", "options": {"temprature": 2}}})
    except RecipeError as error:
        message = str(error)
    assert "recover.method: unknown recover method 'distil' (did you mean 'distill'?)" in message
    try:
        parse_recipe({**BASE, "recover": {"method": "distill", "options": {"temprature": 2}}})
    except RecipeError as error:
        message = str(error)
    assert "recover.options: method 'distill' has no option ['temprature']" in message


def test_a_dynamic_sparsity_run_shows_its_turnover_in_the_report(tmp_path):
    recipe = {**BASE, "prune": {"method": "rigl", "sparsities": [0.9], "epochs": 3}}
    results = run_recipe(parse_recipe(recipe), tmp_path)
    history = results["runs"][0]["history"]
    assert len(history) == 3 and all(np.isfinite(h["turnover"]) for h in history) and history[-1]["turnover"] > 0
    assert "Dynamic sparsity" in (tmp_path / "report.md").read_text()
