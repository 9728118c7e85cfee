"""load_sparse: a compact file goes straight into sparse kernels, never through a dense weight."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from prunekit.artifacts.compact import SparseArray, load_compact_sparse
from prunekit.errors import StateMismatchError
from prunekit.torch import load_compressed, save_compressed
from prunekit.torch.deploy.sparse import SparseLinear, load_sparse


class MLP(nn.Module):
    def __init__(self, hidden: int = 512) -> None:
        super().__init__()
        self.fc1 = nn.Linear(256, hidden)
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def pruned_mlp(sparsity: float = 0.9) -> MLP:
    torch.manual_seed(0)
    model = MLP().eval()
    with torch.no_grad():
        model.fc1.weight[torch.rand_like(model.fc1.weight) < sparsity] = 0.0
    return model


@pytest.mark.parametrize("dtype", ["fp32", "int8", "fp16"])
def test_load_sparse_equals_the_densely_loaded_model(tmp_path: Path, dtype: str) -> None:
    path = tmp_path / "mlp.safetensors"
    save_compressed(pruned_mlp(), path, dtype=dtype)
    dense = load_compressed(path, MLP).eval()
    sparse, report = load_sparse(path, MLP)
    assert isinstance(sparse.fc1, SparseLinear) and type(sparse.fc2) is nn.Linear
    assert sparse.fc1.weight_data.values.dtype == (np.int8 if dtype == "int8" else np.float32)
    choices = {c.name: c for c in report.layers}
    assert choices["fc1"].sparse and choices["fc1"].layout == ("csr int8" if dtype == "int8" else "csr")
    assert choices["fc2"].reason.startswith("sparsity") or choices["fc2"].reason == "stored dense in the file"
    x = torch.randn(5, 256)
    expected = dense(x).detach()
    torch.testing.assert_close(sparse(x), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


def test_load_sparse_never_materialises_the_dense_weight(tmp_path: Path) -> None:
    path = tmp_path / "mlp.safetensors"
    save_compressed(pruned_mlp(0.95), path)
    arrays, header = load_compact_sparse(path)
    stored = arrays["fc1.weight"]
    assert isinstance(stored, SparseArray) and stored.positions.size == header.tensors["fc1.weight"].nnz
    built_on: list[torch.device] = []

    def factory() -> MLP:
        model = MLP()
        built_on.append(model.fc1.weight.device)
        return model

    dense_bytes = 256 * 512 * 4
    tracemalloc.start()
    model, _ = load_sparse(path, factory)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert built_on == [torch.device("meta")]  # the factory's dense weights never got memory
    # the file bytes, the nonzeros and their positions; a dense copy of fc1 alone would be dense_bytes
    assert peak < 0.6 * dense_bytes, f"loading peaked at {peak} bytes of numpy memory, dense fc1 is {dense_bytes}"
    tensors = list(model.parameters()) + list(model.buffers())
    assert all(t.numel() < 256 * 512 for t in tensors)  # no dense fc1 weight anywhere in the model


def test_load_sparse_names_the_first_mismatching_tensor(tmp_path: Path) -> None:
    path = tmp_path / "mlp.safetensors"
    save_compressed(pruned_mlp(), path)
    with pytest.raises(StateMismatchError, match=r"tensor 'fc1.weight' has shape \[512, 256\] in the file but \[128, 256\]"):
        load_sparse(path, lambda: MLP(hidden=128))


def test_load_sparse_with_example_input_records_a_measured_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from prunekit.torch.deploy.sparse import load as load_module

    path = tmp_path / "mlp.safetensors"
    save_compressed(pruned_mlp(), path)
    monkeypatch.setattr(load_module, "_time_pair", lambda dense, sparse, repeats: (3.0, 1.0))
    model, report = load_sparse(path, MLP, example_input=torch.randn(8, 256))
    assert isinstance(model.fc1, SparseLinear) and report.layers[0].reason == "3.00x faster"
    monkeypatch.setattr(load_module, "_time_pair", lambda dense, sparse, repeats: (1.0, 3.0))
    model, report = load_sparse(path, MLP, example_input=torch.randn(8, 256))
    assert type(model.fc1) is nn.Linear and not report.layers[0].sparse
    expected = load_compressed(path, MLP)
    x = torch.randn(2, 256)
    torch.testing.assert_close(model(x), expected(x))
