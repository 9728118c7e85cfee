"""Input statistics: wide inputs keep only the blocks of ``x x^T`` on and above its diagonal."""

from __future__ import annotations

import torch

from prunekit.torch.llm import statistics
from prunekit.torch.llm.sequential import prune
from prunekit.torch.llm.statistics import BLOCK, InputStatistics, statistics_bytes
from tests.torch.llm.tiny import tiny_model, tokens


def _wide_inputs(features: int) -> torch.Tensor:
    return torch.randn(3, 40, features, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.5, 2.0, features)


def test_wide_inputs_sum_the_upper_blocks_into_the_whole_x_xt():
    features = 2 * BLOCK + 7  # three column ranges, the last one short
    x = _wide_inputs(features)
    stats = InputStatistics(features=features, hessian=True)
    for batch in x:
        stats.add(batch)
    flat = x.reshape(-1, features).double()
    expected = flat.t() @ flat
    assert stats.upper is not None and sorted(stats.upper) == [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
    whole = stats.xxt
    assert whole is not None and torch.equal(whole[BLOCK:, :BLOCK], whole[:BLOCK, BLOCK:].t())  # mirrored blocks
    torch.testing.assert_close(whole.double(), expected, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(stats.input_norms().double(), flat.norm(dim=0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats.hessian_matrix().double(), 2 * expected / 120, rtol=1e-5, atol=1e-5)


def test_the_blocks_hold_less_than_the_whole_matrix_and_taking_the_hessian_frees_them():
    features = 6 * BLOCK  # an MLP down projection of GPT-2 small: 21 of 36 blocks
    stats = InputStatistics(features=features, hessian=True)
    stats.add(torch.randn(8, features))
    assert stats.upper is not None
    held = sum(b.numel() for b in stats.upper.values())
    assert held == 21 * BLOCK * BLOCK and held < features * features * 0.6
    expected = stats.hessian_matrix()
    taken = stats.take_hessian()
    assert stats.upper is None and torch.equal(taken, expected)


def test_narrow_inputs_keep_one_matrix_that_the_hessian_is_made_in():
    stats = InputStatistics(features=2 * BLOCK, hessian=True)
    stats.add(torch.randn(8, 2 * BLOCK))
    assert stats.upper is not None and list(stats.upper) == [(0, 0)]
    address = stats.upper[(0, 0)].data_ptr()
    assert stats.take_hessian().data_ptr() == address


def _allocated(stats: InputStatistics) -> int:
    held = list(stats.upper.values()) if stats.upper is not None else [stats.sq_norms]
    return sum(t.numel() * t.element_size() for t in held if t is not None)


def test_statistics_bytes_count_what_the_sums_allocate():
    for features, hessian in ((2 * BLOCK + 7, True), (6 * BLOCK, True), (2 * BLOCK, True), (768, True), (3072, False)):
        stats = InputStatistics(features=features, hessian=hessian)
        stats.add(torch.randn(4, features))
        assert statistics_bytes(features, hessian) == _allocated(stats), (features, hessian)


def test_statistics_bytes_by_hand():
    # ranges 512, 512, 7: blocks (0,0) (0,1) (1,1) of 512 x 512, (0,2) (1,2) of 512 x 7, (2,2) of 7 x 7
    assert statistics_bytes(2 * BLOCK + 7, hessian=True) == (3 * 512 * 512 + 2 * 512 * 7 + 7 * 7) * 4
    assert statistics_bytes(3072, hessian=True) == 21 * 512 * 512 * 4  # not 3072 * 3072 * 4
    assert statistics_bytes(1024, hessian=True) == 1024 * 1024 * 4  # up to 2 * BLOCK: one whole matrix
    assert statistics_bytes(3072, hessian=False) == 3072 * 4


def test_squared_norms_summed_in_row_chunks_equal_the_float64_sums(monkeypatch):
    monkeypatch.setattr(statistics, "SQUARE_CHUNK_BYTES", 7 * 4 * 96)  # 7 rows of 96 features: a short last chunk
    x = _wide_inputs(96)
    stats = InputStatistics(features=96)
    for batch in x:
        stats.add(batch)
    assert stats.sq_norms is not None and stats.tokens == 120
    expected = x.reshape(-1, 96).double().square().sum(0)
    torch.testing.assert_close(stats.sq_norms.double(), expected, rtol=1e-6, atol=0.0)
    whole = torch.zeros(96)
    for batch in x:  # the former whole-batch gemv (bit-equal where the BLAS adds rows in order, as here)
        whole.addmv_(batch.square().t(), torch.ones(batch.shape[0]))
    torch.testing.assert_close(stats.sq_norms, whole, rtol=1e-6, atol=0.0)


def test_the_row_chunks_leave_wanda_s_pruned_weights_unchanged(monkeypatch):
    ids = tokens(6, 32)
    whole, chunked = tiny_model("llama"), tiny_model("llama")
    monkeypatch.setattr(statistics, "SQUARE_CHUNK_BYTES", 1 << 30)  # one chunk per batch: the whole-batch gemv
    prune(whole, ids, method="wanda", sparsity=0.5, n_samples=6, seq_len=32, batch_size=3)
    monkeypatch.setattr(statistics, "SQUARE_CHUNK_BYTES", 5 * 4 * 64)  # 5 rows of the widest (64) input a chunk
    prune(chunked, ids, method="wanda", sparsity=0.5, n_samples=6, seq_len=32, batch_size=3)
    for (name, a), (_, b) in zip(whole.named_parameters(), chunked.named_parameters(), strict=True):
        assert torch.equal(a, b), name
