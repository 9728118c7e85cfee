"""The language-model path: token ids are profiled as one pooled feature and per-token predictions as classes."""

from __future__ import annotations

import numpy as np
import pytest

from prunekit.serve.config import DriftSettings, ServeConfig
from prunekit.serve.profiling import profile_artifact

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("prometheus_client")

VOCAB = 32


class TinyLM(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, 8)
        self.head = torch.nn.Linear(8, VOCAB)

    def forward(self, input_ids):
        return self.head(torch.tanh(self.embed(input_ids)))


def _ids(low: int, high: int, rows: int, length: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high, size=(rows, length), dtype=np.int64)


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    from prunekit.torch.deploy.export import export_onnx

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("lm")
    path = root / "lm" / "1" / "model.onnx"
    path.parent.mkdir(parents=True)
    export_onnx(
        TinyLM().eval(),
        {"input_ids": torch.as_tensor(_ids(0, VOCAB, 2, 6, 0))},
        path,
        dynamic_dims={"input_ids": {1: "sequence"}},
    )
    profile = profile_artifact(path, {"input_ids": _ids(0, VOCAB // 2, 300, 12, 1)})
    (ids,) = profile.inputs
    assert ids.layout == "pooled" and ids.features[0].count == 300 * 12 and ids.features[0].max < VOCAB // 2
    (logits,) = profile.outputs
    assert logits.kind == "classes" and sum(logits.class_counts) == 300 * 12  # one prediction per token
    return root


def _report(root, batches):
    from starlette.testclient import TestClient

    from prunekit.serve.app import ModelServer

    server = ModelServer(ServeConfig(model_dir=root, poll_interval_s=0, access_log=False, drift=DriftSettings(min_rows=50)))
    server.load_models()
    with TestClient(server.app) as client:
        for batch in batches:
            response = client.post("/v1/models/lm:predict", json={"inputs": {"input_ids": batch.tolist()}})
            assert response.status_code == 200, response.text
        return client.get("/v1/models/lm/drift").json()


def test_tokens_from_the_reference_distribution_show_no_drift(lm_dir):
    # other sequence lengths than the profile's are fine: ids are pooled
    report = _report(lm_dir, [_ids(0, VOCAB // 2, 4, length, seed) for seed, length in enumerate([12, 7, 20] * 10)])
    assert report["window_rows"] == 120 and report["inputs"]["input_ids"]["max_psi"] < 0.05
    (output,) = report["outputs"].values()
    assert output["class_psi"] < 0.05
    assert report["alerts"] == []


def test_tokens_from_another_part_of_the_vocabulary_are_flagged(lm_dir):
    report = _report(lm_dir, [_ids(VOCAB // 2, VOCAB, 4, 12, seed) for seed in range(30)])
    (output,) = report["outputs"]
    alerts = [alert["alert"] for alert in report["alerts"]]
    assert report["inputs"]["input_ids"]["max_psi"] > 5 and "input:input_ids" in alerts
    assert f"classes:{output}" in alerts
