"""Sparse weight kernels: every layout computes what the dense layer computes, and the converter records its choices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.torch.deploy.sparse import Layout, SparseConv2d, SparseLinear, detect_layout, kernels, sparsify
from prunekit.torch.deploy.sparse.formats import BSR, CSR, NMPacked


def assert_same_outputs(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal within 1e-5 relative to the output's scale (fp32 accumulation order differs)."""
    scale = float(expected.abs().max())
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * scale)


def pruned_linear(in_f: int, out_f: int, sparsity: float, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    layer = nn.Linear(in_f, out_f)
    with torch.no_grad():
        layer.weight[torch.rand_like(layer.weight) < sparsity] = 0.0
    return layer


def two_four(layer: nn.Linear) -> nn.Linear:
    with torch.no_grad():
        groups = layer.weight.view(layer.out_features, -1, 4)
        smallest = groups.abs().argsort(dim=2)[:, :, :2]
        groups.scatter_(2, smallest, 0.0)
    return layer


def blocky(layer: nn.Linear, block: int = 8, keep: float = 0.25) -> nn.Linear:
    rows, cols = layer.weight.shape
    mask = (torch.rand(rows // block, cols // block) < keep).repeat_interleave(block, 0).repeat_interleave(block, 1)
    with torch.no_grad():
        layer.weight.mul_(mask)
    return layer


def int8_quantized(layer: nn.Linear) -> nn.Linear:
    with torch.no_grad():
        scale = layer.weight.abs().amax(dim=1, keepdim=True) / 127
        layer.weight.copy_(torch.round(layer.weight / scale) * scale)
    return layer


@pytest.fixture(params=[True, False], ids=["numba", "torch-fallback"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    if request.param and not kernels.HAVE_NUMBA:
        pytest.skip("numba not installed")
    monkeypatch.setattr(kernels, "HAVE_NUMBA", request.param)
    return bool(request.param)


@pytest.mark.parametrize("tokens", [1, 3, 8, 11, 16])
def test_csr_layer_equals_dense_for_unstructured_sparsity(backend: bool, tokens: int) -> None:
    layer = pruned_linear(96, 40, 0.9)
    assert detect_layout(layer.weight.detach().numpy()) == Layout("csr")
    sparse = SparseLinear.from_linear(layer, Layout("csr"))
    assert sparse.nnz == int((layer.weight != 0).sum())
    x = torch.randn(tokens, 96)
    assert_same_outputs(sparse(x), layer(x).detach())


def test_block_sparse_weight_is_detected_as_bsr_and_equals_dense(backend: bool) -> None:
    layer = blocky(nn.Linear(64, 48))
    layout = detect_layout(layer.weight.detach().numpy())
    assert layout.kind == "bsr" and layout.block == (16, 16) or layout.block == (8, 8)
    sparse = SparseLinear.from_linear(layer, layout)
    x = torch.randn(5, 64)
    assert_same_outputs(sparse(x), layer(x).detach())


def test_two_four_weight_is_packed_with_half_the_values_and_equals_dense(backend: bool) -> None:
    layer = two_four(nn.Linear(64, 32))
    layout = detect_layout(layer.weight.detach().numpy())
    assert layout == Layout("nm", (2, 4))
    sparse = SparseLinear.from_linear(layer, layout)
    assert sparse.weight_data.values.shape == (32, 32)  # type: ignore[union-attr]
    x = torch.randn(2, 7, 64)
    assert_same_outputs(sparse(x), layer(x).detach())


def test_int8_quantized_weight_is_stored_as_int8_and_equals_dense(backend: bool) -> None:
    layer = int8_quantized(pruned_linear(128, 24, 0.8))
    layout = detect_layout(layer.weight.detach().numpy())
    assert layout == Layout("csr", int8=True)
    sparse = SparseLinear.from_linear(layer, layout)
    assert sparse.weight_data.values.dtype == np.int8  # type: ignore[union-attr]
    x = torch.randn(4, 128)
    assert_same_outputs(sparse(x), layer(x).detach())


def test_int8_two_four_packs_int8_values(backend: bool) -> None:
    layer = int8_quantized(two_four(nn.Linear(32, 16)))
    layout = detect_layout(layer.weight.detach().numpy())
    assert layout == Layout("nm", (2, 4), int8=True)
    sparse = SparseLinear.from_linear(layer, layout)
    x = torch.randn(3, 32)
    assert_same_outputs(sparse(x), layer(x).detach())


@pytest.mark.parametrize("kernel_size,padding", [(1, 0), (3, 1)])
def test_sparse_conv_equals_dense_conv(backend: bool, kernel_size: int, padding: int) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, kernel_size, padding=padding)
    with torch.no_grad():
        conv.weight[torch.rand_like(conv.weight) < 0.85] = 0.0
    sparse = SparseConv2d.from_conv(conv, Layout("csr"))
    assert sparse.pointwise == (kernel_size == 1)
    x = torch.randn(2, 8, 6, 5)
    assert_same_outputs(sparse(x), conv(x).detach())


class TwoLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = pruned_linear(64, 128, 0.95, seed=1)
        self.fc2 = pruned_linear(128, 10, 0.2, seed=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def test_sparsify_records_each_layer_choice_and_keeps_outputs() -> None:
    model = TwoLayer().eval()
    fast, report = sparsify(model, torch.randn(4, 64), min_sparsity=0.5, force=True, repeats=2)
    choices = {c.name: c for c in report.layers}
    assert choices["fc1"].sparse and choices["fc1"].layout == "csr"
    assert choices["fc1"].sparsity == pytest.approx(1 - int((model.fc1.weight != 0).sum()) / (64 * 128))
    assert choices["fc1"].dense_ms is not None and choices["fc1"].sparse_ms is not None
    assert not choices["fc2"].sparse and choices["fc2"].reason == "sparsity 0.20 is below min_sparsity 0.50"
    assert isinstance(fast.fc1, SparseLinear) and type(fast.fc2) is nn.Linear
    assert type(model.fc1) is nn.Linear  # the user's model is left alone
    x = torch.randn(3, 64)
    assert_same_outputs(fast(x), model(x).detach())
    assert "fc2" in report.table() and report.to_json()["layers"][0]["name"] == "fc1"


def fixed_timer(ms: dict[str, float]):  # type: ignore[no-untyped-def]
    """A timer that reports ``ms[name]`` for each candidate (calling none), so a test decides which kernel is faster."""

    def timer(candidates, repeats):  # type: ignore[no-untyped-def]
        return {name: ms[name] for name in candidates}

    return timer


def test_sparsify_keeps_a_layer_dense_when_its_kernel_is_slower() -> None:
    fast, report = sparsify(TwoLayer().eval(), torch.randn(4, 64), repeats=1, timer=fixed_timer({"dense": 1.0, "csr": 2.0}))
    fc1 = report.layers[0]
    assert not fc1.sparse and type(fast.fc1) is nn.Linear
    assert fc1.reason == "sparse kernel not faster at this batch (2.000 ms vs 1.000 ms dense)"


class BlockAndTwoFour(nn.Module):
    """One block-pruned (8x8 blocks, 90 % sparse) and one 2:4-pruned layer."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.block = blocky(nn.Linear(64, 64), block=8, keep=0.1)
        self.nm = two_four(nn.Linear(64, 32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nm(torch.relu(self.block(x)))


# measured faster than dense and than CSR: the block and N:M kernels must be the ones chosen
BLOCK_AND_NM_FASTER = {"dense": 3.0, "csr": 2.0, "bsr 8x8": 1.0, "2:4": 1.5}


def test_sparsify_chooses_bsr_and_nm_kernels_when_they_measure_fastest() -> None:
    model = BlockAndTwoFour().eval()
    fast, report = sparsify(model, torch.randn(8, 64), timer=fixed_timer(BLOCK_AND_NM_FASTER))
    choices = {c.name: c for c in report.layers}
    assert (choices["block"].layout, choices["block"].sparse) == ("bsr 8x8", True)
    assert (choices["nm"].layout, choices["nm"].sparse) == ("2:4", True)
    assert choices["block"].reason == "3.00x faster (also tried csr 2.000 ms)"
    assert isinstance(fast.block.weight_data, BSR) and isinstance(fast.nm.weight_data, NMPacked)
    x = torch.randn(8, 64)
    assert_same_outputs(fast(x), model(x).detach())


def test_sparsify_falls_back_to_csr_when_it_beats_the_block_kernel() -> None:
    fast, report = sparsify(BlockAndTwoFour().eval(), torch.randn(1, 64), timer=fixed_timer({**BLOCK_AND_NM_FASTER, "csr": 0.5}))
    assert [(c.layout, c.sparse) for c in report.layers] == [("csr", True), ("csr", True)]
    assert isinstance(fast.block.weight_data, CSR)


def test_sparsify_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="min_sparsity"):
        sparsify(TwoLayer(), torch.randn(1, 64), min_sparsity=1.0)
    with pytest.raises(ConfigError, match="example_input does not run"):
        sparsify(TwoLayer(), torch.randn(1, 63))
    with pytest.raises(ConfigError, match="fc9"):
        sparsify(TwoLayer(), torch.randn(1, 64), layers=["fc9"])


@pytest.mark.skipif(not kernels.HAVE_NUMBA, reason="numba not installed")
@pytest.mark.parametrize("tokens", [1, 5, 20])
def test_parallel_kernels_equal_dense(monkeypatch: pytest.MonkeyPatch, tokens: int) -> None:
    monkeypatch.setattr(kernels, "PARALLEL_MIN_WORK", 0)  # split even tiny layers over threads
    threads = torch.get_num_threads()
    kernels.set_threads(2)
    try:
        for layer, layout in [
            (pruned_linear(96, 40, 0.9), Layout("csr")),
            (blocky(nn.Linear(64, 48)), Layout("bsr", (8, 8))),
            (two_four(nn.Linear(64, 32)), Layout("nm", (2, 4))),
        ]:
            sparse = SparseLinear.from_linear(layer, layout)
            x = torch.randn(tokens, layer.in_features)
            assert_same_outputs(sparse(x), layer(x).detach())
    finally:
        kernels.set_threads(threads)


@pytest.mark.skipif(not kernels.HAVE_NUMBA, reason="numba not installed")
@pytest.mark.parametrize("int8", [False, True], ids=["fp32", "int8"])
@pytest.mark.parametrize("in_features", [96, 70_000], ids=["uint16-columns", "int32-columns"])
def test_slp_compiled_few_token_kernel_equals_dense_for_each_argument_type(int8: bool, in_features: int) -> None:
    # the signatures compiled with the SLP vectoriser: both column index types, fp32 and int8 values
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(24, in_features, generator=generator)
    weight[torch.rand(weight.shape, generator=generator) < 0.95] = 0.0
    csr = CSR.from_dense(weight.numpy(), int8)
    assert csr.indices.dtype == (np.uint16 if in_features <= 2**16 else np.int32)
    x = torch.randn(8, in_features, generator=generator)
    y = kernels.csr_matmul(x, csr.indptr, csr.indices, csr.values, csr.scale, 24)
    assert_same_outputs(y, x @ torch.from_numpy(csr.to_dense()).T)
    compiled = kernels._numba_kernels(False)["csr_mat_small"]
    index, value = (numba_type(csr.indices.dtype), numba_type(csr.values.dtype))
    assert any(sig[1].dtype == index and sig[2].dtype == value for sig in compiled.signatures)


def numba_type(dtype: np.dtype) -> object:
    from numba import from_dtype

    return from_dtype(dtype)


@pytest.mark.skipif(not kernels.HAVE_NUMBA, reason="numba not installed")
def test_converting_one_layer_compiles_only_the_kernel_signatures_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    kernels._numba_kernels.cache_clear()  # fresh dispatchers: no signature loaded yet (each loads from disk on use)
    monkeypatch.setattr(kernels, "_SLP_READY", set())
    layer = pruned_linear(96, 40, 0.9)
    sparse = SparseLinear.from_linear(layer, Layout("csr"))
    x = torch.randn(8, 96)
    assert_same_outputs(sparse(x), layer(x).detach())
    compiled = kernels._numba_kernels(False)
    loaded = {name: kernel.signatures for name, kernel in compiled.items() if kernel.signatures}
    assert list(loaded) == ["csr_mat_small"]  # not the other layouts' kernels, not the 1-token or many-token ones
    [signature] = loaded["csr_mat_small"]  # fp32 values at uint16 columns only, not the int8 or int32 variants
    assert (signature[1].dtype, signature[2].dtype) == (numba_type(np.dtype(np.uint16)), numba_type(np.dtype(np.float32)))


@pytest.mark.skipif(not kernels.HAVE_NUMBA, reason="numba not installed")
def test_few_token_kernel_compiles_to_packed_vector_arithmetic_on_x86() -> None:
    import platform

    import numba

    from prunekit.torch.deploy.sparse.numba_sources import kernel_sources

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("reads x86 assembly")
    kernel = numba.njit(nogil=True)(kernel_sources()["csr_mat_small"])  # uncached: its assembly can be read
    vector, matrix = numba.types.float32[::1], numba.types.float32[:, ::1]
    signature = (numba.types.int64[::1], numba.types.uint16[::1], vector, vector, vector, matrix, matrix, numba.types.int64)
    kernels._compile_with_slp(kernel, signature)
    assembly = kernel.inspect_asm(signature)
    mnemonics = {line.split()[0] for line in assembly.splitlines() if line.split()}
    # packed single-precision multiplies/adds (the eight sums in one register); scalar code has only *ss forms
    assert {m for m in mnemonics if m.startswith(("vmul", "vadd", "vfmadd")) and m.endswith("ps")}
