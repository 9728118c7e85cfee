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
    load_sparse(path, MLP)  # the first load imports modules (torch.fx, sympy): tens of MiB that are not the model's
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


def fixed_timer(ms: dict[str, float]):  # type: ignore[no-untyped-def]
    """A timer that reports ``ms[name]`` per candidate without calling it: the test decides what is faster."""
    return lambda candidates, repeats: {name: ms[name] for name in candidates}


def test_load_sparse_with_example_input_records_a_measured_choice(tmp_path: Path) -> None:
    path = tmp_path / "mlp.safetensors"
    save_compressed(pruned_mlp(), path)
    x8 = torch.randn(8, 256)
    model, report = load_sparse(path, MLP, example_input=x8, timer=fixed_timer({"dense": 3.0, "csr": 1.0}))
    assert isinstance(model.fc1, SparseLinear) and report.layers[0].reason == "3.00x faster"
    model, report = load_sparse(path, MLP, example_input=x8, timer=fixed_timer({"dense": 1.0, "csr": 3.0}))
    assert type(model.fc1) is nn.Linear and not report.layers[0].sparse
    expected = load_compressed(path, MLP)
    x = torch.randn(2, 256)
    torch.testing.assert_close(model(x), expected(x))


class BlockAndTwoFour(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Linear(64, 64)
        self.nm = nn.Linear(64, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nm(torch.relu(self.block(x)))


def block_and_two_four() -> BlockAndTwoFour:
    """``block``: 8x8 blocks, 90 % of them zero; ``nm``: 2:4 (the two largest of every 4 inputs kept)."""
    torch.manual_seed(4)
    model = BlockAndTwoFour().eval()
    with torch.no_grad():
        keep = (torch.rand(8, 8) < 0.1).repeat_interleave(8, 0).repeat_interleave(8, 1)
        model.block.weight.mul_(keep)
        groups = model.nm.weight.view(32, -1, 4)
        groups.scatter_(2, groups.abs().argsort(dim=2)[:, :, :2], 0.0)
    return model


@pytest.mark.parametrize("dtype", ["fp32", "int8"])
def test_load_sparse_loads_block_and_nm_layers_in_their_kernels(tmp_path: Path, dtype: str) -> None:
    path = tmp_path / "mixed.safetensors"
    save_compressed(block_and_two_four(), path, dtype=dtype)
    model, report = load_sparse(path, BlockAndTwoFour)
    int8 = " int8" if dtype == "int8" else ""
    assert [(c.name, c.layout) for c in report.layers] == [("block", "bsr 8x8"), ("nm", "2:4" + int8)]
    expected = load_compressed(path, BlockAndTwoFour).eval()
    x = torch.randn(3, 64)
    torch.testing.assert_close(model(x), expected(x).detach(), rtol=1e-5, atol=1e-5)


def test_load_sparse_keeps_block_and_nm_kernels_when_measured_faster(tmp_path: Path) -> None:
    path = tmp_path / "mixed.safetensors"
    save_compressed(block_and_two_four(), path)
    faster = fixed_timer({"dense": 3.0, "csr": 2.0, "bsr 8x8": 1.0, "2:4": 1.5})
    model, report = load_sparse(path, BlockAndTwoFour, example_input=torch.randn(8, 64), timer=faster)
    assert [(c.layout, c.sparse, c.reason) for c in report.layers] == [
        ("bsr 8x8", True, "3.00x faster (also tried csr 2.000 ms)"),
        ("2:4", True, "2.00x faster (also tried csr 2.000 ms)"),
    ]
    assert model.block.layout.kind == "bsr" and model.nm.layout.kind == "nm"
    csr_faster = fixed_timer({"dense": 3.0, "csr": 0.5, "bsr 8x8": 1.0, "2:4": 1.5})
    model, report = load_sparse(path, BlockAndTwoFour, example_input=torch.randn(8, 64), timer=csr_faster)
    assert [c.layout for c in report.layers] == ["csr", "csr"] and model.block.layout.kind == "csr"
