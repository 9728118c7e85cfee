"""A recipe's ``llm:`` section prunes a language model one-shot, saves it and reports dense beside pruned."""

import json

import pytest
import yaml
from transformers import AutoModelForCausalLM

from prunekit.cli import main
from prunekit.recipes import RecipeError, parse_recipe

pytestmark = pytest.mark.slow  # the shared fixture trains a tiny LM


def test_an_llm_recipe_prunes_2_4_saves_a_loadable_model_and_reports_perplexity(trained_lm_dir, tmp_path):
    recipe = {
        "name": "tiny-llm",
        "llm": {
            "model": str(trained_lm_dir),
            "method": "sparsegpt",
            "pattern": "2:4",
            "samples": 8,
            "seq_len": 64,
            "eval_tokens": 4000,
        },
    }
    path = tmp_path / "llm.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["prune"]["recipe"]["method"] == "sparsegpt" and results["prune"]["sparsity"] == pytest.approx(0.5)
    assert results["pruned"]["perplexity"] > results["dense"]["perplexity"] > 1
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "pruned")
    weight = model.model.layers[0].mlp.down_proj.weight.detach()
    groups = (weight.reshape(weight.shape[0], -1, 4) != 0).sum(-1)
    assert bool((groups <= 2).all())  # every group of 4 inputs keeps at most 2
    assert "dense beside sparsegpt 2:4" in (tmp_path / "out" / "report.md").read_text()


def test_an_llm_recipe_is_validated_before_any_work(tmp_path):
    with pytest.raises(RecipeError) as caught:
        parse_recipe({"name": "x", "llm": {"model": str(tmp_path), "method": "wandaa", "pattern": "4:2"}})
    message = str(caught.value)
    assert "has no config.json" in message and "(did you mean 'wanda'?)" in message and "N:M pattern" in message
    with pytest.raises(RecipeError, match="exactly one of them"):
        parse_recipe({"name": "x"})
