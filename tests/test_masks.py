"""Mask selection: exact zero counts, deterministic ties, monotone pruning, N:M and blocks."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit import ConfigError, block_mask, global_masks, nm_mask, topk_mask
from prunekit.masks import block_scores


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(1, 9), min_size=1, max_size=3),
    sparsity=st.floats(0.0, 0.999),
    seed=st.integers(0, 2**16),
)
def test_topk_prunes_exactly_round_sparsity_times_numel(shape, sparsity, seed):
    scores = np.random.default_rng(seed).normal(size=shape)
    mask = topk_mask(np.abs(scores), sparsity)
    assert mask.shape == tuple(shape)
    assert int((~mask).sum()) == round(sparsity * mask.size)


def test_topk_prunes_the_smallest_scores():
    mask = topk_mask(np.array([0.3, 0.1, 0.4, 0.2]), 0.5)
    assert mask.tolist() == [True, False, True, False]


def test_topk_breaks_ties_by_flat_index():
    assert topk_mask(np.ones(6), 0.5).tolist() == [False, False, False, True, True, True]


def test_topk_keeps_previously_pruned_entries_pruned():
    previous = np.array([True, False, True, True])
    # the pruned entry now has the largest score; it still stays pruned, and one more goes
    mask = topk_mask(np.array([0.5, 9.0, 0.1, 0.7]), 0.5, previous=previous)
    assert mask.tolist() == [True, False, False, True]


def test_topk_never_lowers_the_pruned_count_below_previous():
    previous = np.array([False, False, False, True])
    mask = topk_mask(np.array([1.0, 2.0, 3.0, 4.0]), 0.25, previous=previous)
    assert mask.tolist() == previous.tolist()


def test_topk_regrow_recomputes_from_scratch():
    previous = np.array([True, False, True, True])
    mask = topk_mask(np.array([0.5, 9.0, 0.1, 0.7]), 0.5, previous=previous, regrow=True)
    assert mask.tolist() == [False, True, False, True]


def test_global_masks_prune_total_count_across_tensors():
    scores = {"small": np.full(10, 0.1), "large": np.arange(1.0, 31.0)}
    masks = global_masks(scores, 0.5)
    assert int((~masks["small"]).sum()) == 10  # all the small ones go first
    assert int((~masks["large"]).sum()) == 10  # then the ten smallest of the large
    assert masks["large"][:10].sum() == 0 and masks["large"][10:].all()


def test_global_masks_normalized_by_max_balances_layers():
    scores = {"small": np.arange(1.0, 11.0) * 1e-3, "large": np.arange(1.0, 11.0)}
    masks = global_masks(scores, 0.5, normalize="max")
    assert int((~masks["small"]).sum()) == 5 and int((~masks["large"]).sum()) == 5


def test_global_masks_rejects_unknown_normalization():
    with pytest.raises(ConfigError, match="normalize should be one of"):
        global_masks({"a": np.ones(3)}, 0.5, normalize="median")


def test_nm_keeps_n_largest_of_every_m_along_axis_1():
    scores = np.array([[4.0, 1.0, 3.0, 2.0, 0.0, 5.0, 6.0, 1.0]])
    assert nm_mask(scores, 2, 4).astype(int).tolist() == [[1, 0, 1, 0, 0, 1, 1, 0]]


def test_nm_on_conv_weights_groups_input_channels():
    scores = np.random.default_rng(0).random((3, 8, 2, 2))
    mask = nm_mask(scores, 2, 4, axis=1)
    groups = mask.reshape(3, 2, 4, 2, 2).sum(axis=2)
    assert (groups == 2).all()


def test_nm_needs_axis_divisible_by_m():
    with pytest.raises(ConfigError, match="must be a multiple of 4"):
        nm_mask(np.ones((2, 6)), 2, 4)


def test_block_mask_prunes_whole_blocks_by_mean_magnitude():
    scores = np.arange(32.0).reshape(4, 8)
    mask = block_mask(scores, (2, 4), 0.5)
    assert mask[:2].sum() == 0 and mask[2:].all()
    assert block_scores(scores, (2, 4)).tolist() == [[5.5, 9.5], [21.5, 25.5]]


def test_block_mask_on_4d_uses_out_by_rest_view():
    mask = block_mask(np.random.default_rng(1).random((4, 2, 2, 2)), (1, 4), 0.5)
    blocks = mask.reshape(4, 2, 4)
    assert all(block.all() or not block.any() for row in blocks for block in row)
    assert int((~mask).sum()) == 16


def test_block_mask_rejects_blocks_that_do_not_tile():
    with pytest.raises(ConfigError, match="does not tile"):
        block_mask(np.ones((3, 4)), (2, 2), 0.5)


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5])
def test_sparsity_outside_unit_interval_is_refused(sparsity):
    with pytest.raises(ConfigError, match="sparsity should be in \\[0, 1\\)"):
        topk_mask(np.ones(4), sparsity)


def test_nan_scores_are_refused():
    with pytest.raises(ConfigError, match="NaN"):
        topk_mask(np.array([1.0, np.nan]), 0.5)


@settings(max_examples=80, deadline=None)
@given(
    values=st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0, -np.inf]), min_size=1, max_size=40),
    sparsity=st.floats(0.0, 0.999),
)
def test_topk_matches_a_stable_sort_even_with_many_ties(values, sparsity):
    scores = np.array(values)
    count = round(sparsity * scores.size)
    expected = np.ones(scores.size, dtype=bool)
    expected[np.argsort(scores, kind="stable")[:count]] = False
    assert topk_mask(scores, sparsity).tolist() == expected.tolist()
