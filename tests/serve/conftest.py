"""Tiny ONNX models exported once per session with plain ``torch.onnx.export``.

``onnx_models`` maps a name to a ``model.onnx`` path:

- ``mlp_v1``, ``mlp_v2``: x float32 [N, 4] -> y float32 [N, 3], different weights; half of
  ``mlp_v2``'s weight entries (28 of 56) are exactly zero.
- ``two_heads``: x float32 [N, 4] and ids int64 [N, 2] -> logits float32 [N, 3], score float32 [N, 1].
- ``broken``: bytes that are not an ONNX model.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.legacy_onnx import export_legacy_onnx

pytest.importorskip("onnxruntime")


def _export(model, example: tuple, inputs: list[str], outputs: list[str], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = {name: {0: "batch"} for name in inputs + outputs}
    export_legacy_onnx(model.eval(), example, path, input_names=inputs, output_names=outputs, dynamic_axes=axes)
    return path


def _mlp(seed: int, zero_half: bool = False):
    import torch

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    if zero_half:
        with torch.no_grad():
            for layer in (model[0], model[2]):
                flat = layer.weight.view(-1)
                flat[: flat.numel() // 2] = 0.0
    return model


def _two_heads():
    import torch
    from torch import nn

    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.body = nn.Linear(8, 6)
            self.logits = nn.Linear(6, 3)
            self.score = nn.Linear(6, 1)

        def forward(self, x, ids):
            hidden = torch.relu(self.body(torch.cat([x, self.embed(ids).sum(1)], 1)))
            return self.logits(hidden), torch.sigmoid(self.score(hidden))

    torch.manual_seed(3)
    return TwoHeads()


@pytest.fixture(scope="session")
def onnx_models(tmp_path_factory) -> dict[str, Path]:
    torch = pytest.importorskip("torch")
    root = tmp_path_factory.mktemp("onnx_models")
    x = torch.zeros(1, 4)
    models = {
        "mlp_v1": _export(_mlp(1), (x,), ["x"], ["y"], root / "mlp_v1" / "model.onnx"),
        "mlp_v2": _export(_mlp(2, zero_half=True), (x,), ["x"], ["y"], root / "mlp_v2" / "model.onnx"),
        "two_heads": _export(
            _two_heads(),
            (x, torch.zeros(1, 2, dtype=torch.long)),
            ["x", "ids"],
            ["logits", "score"],
            root / "two_heads" / "model.onnx",
        ),
    }
    broken = root / "broken" / "model.onnx"
    broken.parent.mkdir()
    broken.write_bytes(b"this is not an ONNX model")
    models["broken"] = broken
    return models


@pytest.fixture(scope="session")
def doc_workdir(tmp_path_factory) -> Path:
    """A directory in which docs/serving.md's setup snippet has made ``models/demo/1/model.onnx``."""
    import sys

    from tests.serve.doc_examples import make_doc_models

    pytest.importorskip("torch")
    cwd = tmp_path_factory.mktemp("docs")
    make_doc_models(cwd, sys.executable)
    return cwd
