"""SparseGPT's inverse-Hessian factor: the in-place reversal route equals the reference Cholesky chain."""

from __future__ import annotations

import pytest
import torch

from prunekit.torch.llm.methods import _inverse_hessian_factor, _lapack_in_place, _reverse_in_place, _stable_pivots
from prunekit.torch.llm.statistics import InputStatistics


@pytest.mark.parametrize("size", [1, 2, 5, 8, 33])
def test_reverse_in_place_reverses_rows_and_columns(size: int) -> None:
    matrix = torch.arange(size * size, dtype=torch.float32).reshape(size, size)
    reversed_ = matrix.clone()
    _reverse_in_place(reversed_, chunk=3)  # several chunks, an odd middle element for odd sizes
    assert torch.equal(reversed_, matrix.flip(0, 1))


def _reference_factor(hessian: torch.Tensor, dampening: float) -> torch.Tensor:
    """The SparseGPT reference: dampen, Cholesky, invert, upper Cholesky of the inverse."""
    h = hessian.clone()
    h.diagonal().add_(dampening * h.diagonal().mean())
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h.double())), upper=True).float()


def test_factor_equals_reference_chain_and_marks_dead_inputs() -> None:
    torch.manual_seed(0)
    stats = InputStatistics(features=24, hessian=True)
    x = torch.randn(200, 24) * torch.linspace(0.1, 3.0, 24)
    x[:, 5] = 0.0  # an input that never fires
    stats.add(x)
    factor, dead = _inverse_hessian_factor(stats, 0.01, torch.device("cpu"), "layer")
    hessian = stats.hessian_matrix()
    hessian[5, 5] = 1.0
    assert dead.nonzero().flatten().tolist() == [5]
    assert torch.equal(factor, factor.triu())
    torch.testing.assert_close(factor, _reference_factor(hessian, 0.01), rtol=1e-4, atol=1e-5)


def test_factor_leaves_the_statistics_unchanged() -> None:
    stats = InputStatistics(features=6, hessian=True)
    stats.add(torch.randn(30, 6, generator=torch.Generator().manual_seed(1)))
    before = stats.hessian_matrix()
    _inverse_hessian_factor(stats, 0.01, torch.device("cpu"), "layer")
    assert torch.equal(stats.hessian_matrix(), before)


def test_singular_hessian_gets_more_dampening() -> None:
    stats = InputStatistics(features=3, hessian=True)
    stats.add(torch.ones(4, 3))  # rank one: singular without dampening, so the first retry (1e-4) applies
    factor, _ = _inverse_hessian_factor(stats, 0.0, torch.device("cpu"), "proj")
    hessian = stats.hessian_matrix().double()
    hessian.diagonal().add_(1e-4 * hessian.diagonal().mean())
    torch.testing.assert_close(
        (factor.double().t() @ factor.double()) @ hessian, torch.eye(3, dtype=torch.float64), atol=2e-2, rtol=0
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lapack_steps_overwrite_the_matrix_with_the_lower_factor_and_its_inverse(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 12, dtype=dtype)
    hessian = x.T @ x + torch.eye(12, dtype=dtype)
    work = hessian.clone()
    address = work.data_ptr()
    assert _lapack_in_place(work, "cholesky")
    lower = torch.linalg.cholesky(hessian)
    torch.testing.assert_close(work, lower)  # the upper triangle is cleared
    assert _lapack_in_place(work, "inverse")
    torch.testing.assert_close(work, torch.linalg.inv(lower), rtol=1e-4, atol=1e-5)
    assert work.data_ptr() == address  # no second d x d matrix
    assert not _lapack_in_place(-hessian.clone(), "cholesky")


def test_noise_sized_pivots_are_rejected() -> None:
    rank_one = torch.full((3, 3), 2.0)
    factor = torch.tensor([[1.4142135, 0.0, 0.0], [1.4142135, 1e-4, 0.0], [1.4142135, 0.0, 1e-4]])
    assert not _stable_pivots(factor.diagonal(), rank_one.diagonal())
    assert _stable_pivots(torch.linalg.cholesky(torch.eye(3) * 2.0).diagonal(), torch.full((3,), 2.0))


def test_statistics_with_a_hessian_give_the_norms_from_its_diagonal_and_release_frees_them() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 10, 6)
    with_hessian, plain = InputStatistics(features=6, hessian=True), InputStatistics(features=6)
    for stats in (with_hessian, plain):
        stats.add(x[0])
        stats.add(x[1])
    expected = x.reshape(-1, 6).norm(dim=0)
    torch.testing.assert_close(with_hessian.input_norms(), expected)
    torch.testing.assert_close(plain.input_norms(), expected)
    assert with_hessian.sq_norms is None  # one copy of the squares, not two
    with_hessian.release()
    with pytest.raises(ValueError, match="no calibration inputs"):
        with_hessian.input_norms()


def test_a_consumed_hessian_is_factored_in_its_own_memory_and_collected_again_to_start_over() -> None:
    def rank_one() -> InputStatistics:
        stats = InputStatistics(features=3, hessian=True)
        stats.add(torch.ones(4, 3))  # singular without dampening: the first attempt fails
        return stats

    calls = []

    def recollect() -> InputStatistics:
        calls.append(1)
        return rank_one()

    stats = rank_one()
    factor, _ = _inverse_hessian_factor(stats, 0.0, torch.device("cpu"), "proj", recollect)
    assert stats.xxt is None and len(calls) == 1  # consumed by the first attempt, collected again once
    hessian = rank_one().hessian_matrix().double()
    hessian.diagonal().add_(1e-4 * hessian.diagonal().mean())
    torch.testing.assert_close(
        (factor.double().t() @ factor.double()) @ hessian, torch.eye(3, dtype=torch.float64), atol=2e-2, rtol=0
    )

    torch.manual_seed(0)
    healthy = InputStatistics(features=5, hessian=True)
    healthy.add(torch.randn(50, 5))
    expected, _ = _inverse_hessian_factor(healthy, 0.01, torch.device("cpu"), "proj")
    address = healthy.xxt.data_ptr()
    factor, _ = _inverse_hessian_factor(healthy, 0.01, torch.device("cpu"), "proj", recollect)
    assert factor.data_ptr() == address and len(calls) == 1  # the sums' memory became the factor
    torch.testing.assert_close(factor, expected)
