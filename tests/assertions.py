"""Domain assertions written once and used by every test: sparsity to the element, equal outputs."""

from __future__ import annotations

import numpy as np


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def assert_zero_count(tensor, expected_zeros: int, name: str = "tensor") -> None:
    """The tensor holds exactly ``expected_zeros`` zeros."""
    zeros = int((_to_numpy(tensor) == 0).sum())
    assert zeros == expected_zeros, f"{name}: {zeros} zeros, expected exactly {expected_zeros}"


def assert_sparsity(tensor, sparsity: float, name: str = "tensor") -> None:
    """The tensor has exactly round(sparsity * numel) zeros."""
    array = _to_numpy(tensor)
    assert_zero_count(array, round(sparsity * array.size), name)


def assert_same_outputs(a, b, atol: float = 1e-5, rtol: float = 1e-5) -> None:
    """Two outputs (tensors or arrays) are equal within tolerance, with the same shape."""
    a, b = _to_numpy(a), _to_numpy(b)
    assert a.shape == b.shape, f"shapes differ: {a.shape} vs {b.shape}"
    np.testing.assert_allclose(a, b, atol=atol, rtol=rtol)
