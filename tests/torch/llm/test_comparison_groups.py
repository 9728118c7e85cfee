"""Comparison groups: Wanda's inputs are the projections' own (post-norm) inputs, and ``"auto"`` picks row or layer by output error."""

from __future__ import annotations

import pytest
import torch

from prunekit.cli import build_parser
from prunekit.errors import ConfigError
from prunekit.methods.llm_options import COMPARISON_CHOICES
from prunekit.recipes import RecipeError, parse_recipe
from prunekit.torch.llm.discovery import find_decoder_stack
from prunekit.torch.llm.methods import LayerTask, magnitude, output_error, sparsegpt, wanda
from prunekit.torch.llm.sequential import prune
from prunekit.torch.llm.statistics import InputStatistics
from tests.torch.llm.tiny import tiny_model, tokens


def _stats(x: torch.Tensor) -> InputStatistics:
    stats = InputStatistics(features=x.shape[-1], hessian=True)
    stats.add(x)
    return stats


def _data(seed: int, rows: int = 12, cols: int = 16, rank: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight and 64 calibration inputs of the given ``rank`` (correlated features, so cross terms matter)."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=generator)
    return weight, torch.randn(64, rank, generator=generator) @ torch.randn(rank, cols, generator=generator)


def test_output_error_is_the_squared_distance_of_the_calibration_outputs():
    weight, x = _data(0)
    pruned = wanda(LayerTask("fc", weight, _stats(x), 0.5))
    expected = float(((x @ weight.t() - x @ pruned.t()) ** 2).sum())
    assert output_error(weight, pruned, _stats(x)) == pytest.approx(expected, rel=1e-4)
    assert output_error(weight, weight, _stats(x)) == 0.0


@pytest.mark.parametrize("method", [magnitude, wanda, sparsegpt])
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_auto_keeps_the_group_with_the_smaller_output_error(method, seed):
    weight, x = _data(seed, rank=1)
    stats = _stats(x)
    errors = {g: output_error(weight, method(LayerTask("fc", weight, stats, 0.5, comparison=g)), stats) for g in ("row", "layer")}
    pruned, group = method.prune_with_group(LayerTask("fc", weight, stats, 0.5, comparison="auto"))
    assert group == min(errors, key=errors.__getitem__)
    assert output_error(weight, pruned, stats) == pytest.approx(min(errors.values()), rel=1e-6)


def test_auto_is_not_one_fixed_group():
    cases = [_data(seed, rank=1) for seed in range(5)]
    groups = [wanda.prune_with_group(LayerTask("fc", w, _stats(x), 0.5, comparison="auto"))[1] for w, x in cases]
    assert groups == ["layer", "row", "layer", "layer", "row"]  # rank-1 inputs: cross terms sometimes favour rows


def test_auto_prunes_across_rows_when_their_scales_differ():
    weight, x = _data(5)
    weight[:6] *= 0.01  # half the outputs are tiny: per layer takes their weights first
    pruned, group = wanda.prune_with_group(LayerTask("fc", weight, _stats(x), 0.5, comparison="auto"))
    assert group == "layer"
    assert int((pruned[:6] == 0).sum()) > int((pruned[6:] == 0).sum())


def test_auto_without_the_input_products_is_refused_naming_the_layer():
    weight, x = _data(0)
    norms_only = InputStatistics(features=16)
    norms_only.add(x)
    with pytest.raises(ConfigError, match=r"'blocks.0.fc'.*hessian=True"):
        wanda(LayerTask("blocks.0.fc", weight, norms_only, 0.5, comparison="auto"))


def test_wanda_norms_are_over_the_tokens_of_each_projection_s_own_input_after_the_norm():
    model = tiny_model("llama")
    ids = tokens(4, 16)
    block = find_decoder_stack(model).blocks[0]
    with torch.no_grad():
        embeds = model.model.embed_tokens(ids)
        normed = block.input_layernorm(embeds).reshape(-1, embeds.shape[-1])  # what q/k/v see, by hand
    weight = block.self_attn.q_proj.weight.detach().clone()
    scores = weight.abs() * normed.norm(dim=0)
    keep = torch.zeros_like(weight, dtype=torch.bool)
    keep.scatter_(1, scores.topk(weight.shape[1] // 2, dim=1).indices, True)
    prune(model, ids, method="wanda", sparsity=0.5, n_samples=4, seq_len=16, batch_size=3, skip=["model.layers.1"])
    assert torch.equal(block.self_attn.q_proj.weight != 0, keep)


def test_prune_with_auto_records_each_projection_s_group():
    model = tiny_model("llama")
    result = prune(model, tokens(), method="wanda", sparsity=0.5, n_samples=6, seq_len=32, batch_size=4, comparison="auto")
    assert result.recipe["comparison"] == "auto"
    assert set(result.comparisons) == set(result.achieved) and set(result.comparisons.values()) <= {"row", "layer"}
    assert result.sparsity == pytest.approx(0.5, abs=1e-3)
    layers = result.to_dict()["layers"]
    assert all(layers[n]["comparison"] == result.comparisons[n] for n in layers)


def test_auto_makes_magnitude_ask_for_calibration_data():
    with pytest.raises(ConfigError, match="needs calibration data"):
        prune(tiny_model("llama"), method="magnitude", sparsity=0.5, comparison="auto")


def test_the_recipe_and_the_cli_offer_the_backend_s_comparison_choices(tmp_path):
    config = tmp_path / "config.json"
    config.write_text("{}")
    recipe = parse_recipe({"name": "x", "llm": {"model": str(tmp_path), "method": "wanda", "comparison": "auto"}})
    assert recipe.llm is not None and recipe.llm.comparison == "auto"
    with pytest.raises(RecipeError, match=r"llm.comparison.*should be one of \['row', 'layer', 'auto'\], got 'rows'"):
        parse_recipe({"name": "x", "llm": {"model": str(tmp_path), "method": "wanda", "comparison": "rows"}})
    with pytest.raises(RecipeError, match=r"llm.ratios.*should be one of \['uniform', 'owl'\]"):
        parse_recipe({"name": "x", "llm": {"model": str(tmp_path), "method": "wanda", "ratios": "owls"}})
    argv = ["llm", "prune", "m", "--method", "wanda", "--comparison", "auto", "--output", str(tmp_path / "o")]
    args = build_parser(argv).parse_args(argv)
    assert args.comparison == "auto" and COMPARISON_CHOICES == ("row", "layer", "auto")
