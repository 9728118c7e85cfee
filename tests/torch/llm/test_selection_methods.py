"""Mask selection and the three LLM methods on single weight matrices, against hand computations."""

from __future__ import annotations

import pytest
import torch

from prunekit.errors import ConfigError
from prunekit.torch.llm.methods import LayerTask, magnitude, sparsegpt, wanda
from prunekit.torch.llm.selection import layer_mask, n_m_mask, parse_pattern, row_mask
from prunekit.torch.llm.statistics import InputStatistics


def _stats(x: torch.Tensor, hessian: bool = True) -> InputStatistics:
    stats = InputStatistics(features=x.shape[-1], hessian=hessian)
    stats.add(x)
    return stats


def _weight(rows: int = 8, cols: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


def test_row_mask_drops_the_lowest_scores_of_each_row():
    keep = row_mask(torch.tensor([[1.0, 3.0, 2.0, 4.0], [4.0, 3.0, 2.0, 1.0]]), 0.5)
    assert keep.tolist() == [[False, True, False, True], [True, True, False, False]]


def test_masks_above_half_sparsity_keep_the_highest_scores():
    scores = torch.tensor([[1.0, 3.0, 2.0, 4.0], [4.0, 3.0, 2.0, 1.0]])
    assert row_mask(scores, 0.75).tolist() == [[False, False, False, True], [True, False, False, False]]
    assert layer_mask(torch.arange(12.0).reshape(3, 4), 0.75).reshape(-1).tolist() == [False] * 9 + [True] * 3


def test_layer_mask_drops_exactly_round_numel_times_sparsity():
    keep = layer_mask(torch.ones(5, 7), 0.31)  # 10.85: all ties, still exactly 11 dropped (as prunekit.masks counts)
    assert int((~keep).sum()) == 11
    assert int((~row_mask(torch.ones(5, 10), 0.36)).sum(dim=1).max()) == 4  # 3.6 per row rounds to 4


@pytest.mark.parametrize("blocksize", [4, 128])
def test_sparsegpt_prunes_the_rounded_count_however_its_blocks_split_the_row(blocksize):
    weight, x = _weight(6, 10, seed=3), torch.randn(64, 10, generator=torch.Generator().manual_seed(4))
    by_row = sparsegpt(LayerTask("fc", weight, _stats(x), 0.36, comparison="row"), blocksize=blocksize)
    assert (by_row == 0).sum(dim=1).tolist() == [4] * 6  # 10 * 0.36 = 3.6: round, as row_mask and wanda count
    assert (wanda(LayerTask("fc", weight, _stats(x), 0.36, comparison="row")) == 0).sum(dim=1).tolist() == [4] * 6
    by_layer = sparsegpt(LayerTask("fc", weight, _stats(x), 0.36, comparison="layer"), blocksize=blocksize)
    assert int((by_layer == 0).sum()) == 22  # 60 * 0.36 = 21.6


def test_every_n_m_group_keeps_exactly_n():
    scores = _weight(16, 32).abs()
    for n, m in [(2, 4), (4, 8), (1, 4)]:
        keep = n_m_mask(scores, n, m)
        assert (keep.reshape(16, 32 // m, m).sum(dim=2) == n).all()
        top = torch.topk(scores.reshape(16, -1, m), n, dim=2).values.sum()
        assert torch.isclose((scores * keep).sum(), top)


def test_pattern_parsing_and_errors():
    assert parse_pattern("2:4") == (2, 4) and parse_pattern(" 4 : 8 ") == (4, 8) and parse_pattern(None) is None
    for bad in ("4:2", "2-4", "0:4"):
        with pytest.raises(ConfigError):
            parse_pattern(bad)
    with pytest.raises(ConfigError, match="mlp.up"):
        n_m_mask(torch.ones(2, 6), 2, 4, layer="mlp.up")


@pytest.mark.parametrize("pattern", [None, (2, 4)])
def test_sparsegpt_at_sparsity_zero_returns_the_weights_unchanged(pattern):
    weight = _weight()
    x = torch.randn(64, 16)
    task = LayerTask("fc", weight, _stats(x), 0.0, pattern=None)
    assert torch.equal(sparsegpt(task), weight)


@pytest.mark.parametrize("comparison", ["layer", "row"])
@pytest.mark.parametrize("pattern", [None, (2, 4), (4, 8)])
def test_sparsegpt_with_whitened_inputs_picks_the_magnitude_mask(pattern, comparison):
    weight = _weight(8, 16)
    x = torch.eye(16) * 3.0  # X X^T proportional to the identity
    task = LayerTask("fc", weight, _stats(x), 0.5, pattern=pattern, comparison=comparison)
    pruned = sparsegpt(task, blocksize=16)
    expected = magnitude(LayerTask("fc", weight, None, 0.5, pattern=pattern, comparison=comparison))
    assert torch.equal(pruned != 0, expected != 0)
    assert torch.allclose(pruned, expected)  # no correlation, so nothing to compensate


def test_wanda_with_equal_input_norms_equals_per_row_magnitude():
    weight = _weight(8, 16)
    x = torch.full((10, 16), 2.0)
    for pattern in (None, (2, 4)):
        got = wanda(LayerTask("fc", weight, _stats(x, hessian=False), 0.5, pattern=pattern))
        expected = magnitude(LayerTask("fc", weight, None, 0.5, pattern=pattern, comparison="row"))
        assert torch.equal(got, expected)


def test_wanda_keeps_weights_of_loud_inputs():
    weight = torch.ones(2, 4)
    x = torch.tensor([[10.0, 1.0, 5.0, 0.1]])
    got = wanda(LayerTask("fc", weight, _stats(x, hessian=False), 0.5))
    assert (got != 0).tolist() == [[True, False, True, False]] * 2


@pytest.mark.parametrize("method", [magnitude, wanda, sparsegpt])
@pytest.mark.parametrize("pattern,sparsity", [(None, 0.5), (None, 0.75), ((2, 4), 0.5), ((4, 8), 0.5)])
def test_methods_reach_the_exact_sparsity(method, pattern, sparsity):
    weight = _weight(8, 32)
    x = torch.randn(128, 32, generator=torch.Generator().manual_seed(3))
    pruned = method(LayerTask("fc", weight, _stats(x), sparsity, pattern=pattern, comparison="row"))
    assert int((pruned == 0).sum()) == int(weight.numel() * sparsity)
    if pattern is not None:
        n, m = pattern
        assert ((pruned.reshape(8, -1, m) != 0).sum(dim=2) == n).all()


def test_sparsegpt_reconstructs_correlated_inputs_better_than_magnitude_and_wanda():
    gen = torch.Generator().manual_seed(0)
    mix = torch.randn(32, 32, generator=gen)
    x = torch.randn(512, 32, generator=gen) @ mix  # strongly correlated features
    weight = _weight(16, 32)
    stats = _stats(x)

    def error(pruned: torch.Tensor) -> float:
        return float(((x @ weight.t() - x @ pruned.t()) ** 2).mean())

    for pattern in (None, (2, 4)):
        task = LayerTask("fc", weight, stats, 0.5, pattern=pattern, comparison="row")
        e_sgpt, e_mag, e_wanda = error(sparsegpt(task)), error(magnitude(task)), error(wanda(task))
        assert e_sgpt < 0.9 * min(e_mag, e_wanda)
