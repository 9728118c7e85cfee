"""The server's third runtime: a compact sparse file served through the sparse kernels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.serve.repository import ModelRepository
from prunekit.serve.runtimes import load_runtime
from prunekit.torch.deploy.sparse import SparseLinear
from prunekit.torch.deploy.sparse.serving import save_servable

FACTORY = "tests.torch.sparse.test_serve_sparse:ServedMLP"


class ServedMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 256)
        self.fc2 = nn.Linear(256, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def pruned() -> ServedMLP:
    torch.manual_seed(0)
    model = ServedMLP().eval()
    with torch.no_grad():
        model.fc1.weight[torch.rand_like(model.fc1.weight) < 0.9] = 0.0
    return model


def test_repository_serves_a_sparse_file_with_the_dense_models_outputs(tmp_path: Path) -> None:
    model = pruned()
    version = tmp_path / "mlp" / "1"
    version.mkdir(parents=True)
    save_servable(model, version / "model.sparse.safetensors", torch.randn(2, 64), FACTORY)
    repo = ModelRepository(tmp_path)
    repo.sync(initial=True)
    loaded = repo.get("mlp")
    assert loaded.runtime.format == "sparse"
    assert [(s.name, s.shape) for s in loaded.runtime.inputs] == [("input", (None, 64))]
    assert loaded.info.weight_sparsity is not None and loaded.info.weight_sparsity > 0.8
    assert isinstance(loaded.runtime._model.fc1, SparseLinear)  # type: ignore[attr-defined]
    x = np.random.default_rng(0).standard_normal((5, 64)).astype(np.float32)
    out = loaded.runtime.run({"input": x})["output"]
    expected = model(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_a_sparse_file_without_a_factory_is_refused_with_how_to_fix(tmp_path: Path) -> None:
    from prunekit.torch import save_compressed

    path = tmp_path / "model.sparse.safetensors"
    save_compressed(pruned(), path)
    with pytest.raises(ConfigError, match="names no model factory; write it with .*save_servable"):
        load_runtime(path)


def test_save_servable_refuses_a_factory_it_cannot_import(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="factory 'nowhere.models:MLP' cannot be imported"):
        save_servable(pruned(), tmp_path / "m.sparse.safetensors", torch.randn(1, 64), "nowhere.models:MLP")
