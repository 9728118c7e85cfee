"""The model directory: versions, settling, refusal of broken versions, swaps and unloads."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from prunekit.errors import ConfigError, CorruptFileError, MissingDependencyError
from prunekit.serve.model_info import inspect_model
from prunekit.serve.repository import ModelNotFoundError, ModelRepository
from prunekit.serve.runtimes import OnnxRuntime, TensorSpec, load_runtime
from tests.serve.live import ort_run, place


def states(repo: ModelRepository, name: str) -> dict[int, str]:
    return {s.version: s.state for s in repo.status(name)}


def test_onnx_runtime_reports_names_shapes_and_dtypes(onnx_models):
    runtime = OnnxRuntime(onnx_models["two_heads"])
    assert runtime.inputs == (
        TensorSpec("x", (None, 4), np.dtype("float32")),
        TensorSpec("ids", (None, 2), np.dtype("int64")),
    )
    assert [(s.name, s.json_shape()) for s in runtime.outputs] == [("logits", [-1, 3]), ("score", [-1, 1])]


def test_onnx_runtime_outputs_equal_onnxruntime_run_directly(onnx_models):
    feeds = {
        "x": np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32),
        "ids": np.arange(10, dtype=np.int64).reshape(5, 2),
    }
    got = load_runtime(onnx_models["two_heads"]).run(feeds)
    expected = ort_run(onnx_models["two_heads"], feeds)
    for name in ("logits", "score"):
        np.testing.assert_array_equal(got[name], expected[name])


def test_unreadable_onnx_file_names_the_file(onnx_models):
    with pytest.raises(CorruptFileError, match=r"cannot load ONNX model .*broken/model.onnx"):
        load_runtime(onnx_models["broken"])


def test_tflite_without_a_runtime_says_which_extra_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    path = tmp_path / "model.tflite"
    path.write_bytes(b"TFL3")
    with pytest.raises(MissingDependencyError, match=r"pip install 'prunekit\[keras\]'"):
        load_runtime(path)


def test_loads_only_the_highest_version_by_default(tmp_path, onnx_models):
    place(tmp_path, "mlp", 1, onnx_models["mlp_v1"])
    place(tmp_path, "mlp", 2, onnx_models["mlp_v2"])
    repo = ModelRepository(tmp_path)
    repo.sync(initial=True)
    assert repo.get("mlp").version == 2
    assert states(repo, "mlp") == {2: "AVAILABLE"}
    with pytest.raises(ModelNotFoundError, match=r"model 'mlp' has no loaded version 1; loaded versions: \[2\]"):
        repo.get("mlp", 1)


def test_keep_versions_zero_loads_every_version(tmp_path, onnx_models):
    place(tmp_path, "mlp", 1, onnx_models["mlp_v1"])
    place(tmp_path, "mlp", 7, onnx_models["mlp_v2"])
    repo = ModelRepository(tmp_path, keep_versions=0)
    repo.sync(initial=True)
    assert [repo.get("mlp", v).version for v in (1, 7)] == [1, 7]


def test_unknown_model_error_lists_the_loaded_models(tmp_path, onnx_models):
    place(tmp_path, "mlp", 1, onnx_models["mlp_v1"])
    repo = ModelRepository(tmp_path)
    repo.sync(initial=True)
    with pytest.raises(ModelNotFoundError, match=r"model 'nope' not found; loaded models: \['mlp'\]"):
        repo.get("nope")


def test_new_version_loads_once_its_files_are_unchanged_between_two_scans(tmp_path, onnx_models):
    place(tmp_path, "mlp", 1, onnx_models["mlp_v1"])
    repo = ModelRepository(tmp_path)
    repo.sync(initial=True)
    place(tmp_path, "mlp", 2, onnx_models["mlp_v2"])
    first = repo.sync()
    assert first.loaded == [] and repo.get("mlp").version == 1
    assert states(repo, "mlp") == {2: "LOADING", 1: "AVAILABLE"}
    second = repo.sync()
    assert [m.version for m in second.loaded] == [2] and [m.version for m in second.unloaded] == [1]
    assert repo.get("mlp").version == 2
    assert states(repo, "mlp") == {2: "AVAILABLE", 1: "END"}


def test_broken_new_version_is_refused_and_the_old_one_keeps_serving(tmp_path, onnx_models):
    place(tmp_path, "mlp", 1, onnx_models["mlp_v1"])
    repo = ModelRepository(tmp_path)
    repo.sync(initial=True)
    place(tmp_path, "mlp", 2, onnx_models["broken"])
    repo.sync()
    report = repo.sync()
    assert [(name, version) for name, version, _ in report.failed] == [("mlp", 2)]
    assert report.unloaded == [] and repo.get("mlp").version == 1
    status = repo.status("mlp")[0].to_json()
    assert status["version"] == "2" and status["state"] == "END"
    assert status["status"]["error_code"] == "UNKNOWN"
    assert "model 'mlp' version 2 refused: cannot load ONNX model" in status["status"]["error_message"]


def test_refused_version_is_not_retried_until_its_files_change(tmp_path, onnx_models):
    place(tmp_path, "mlp", 1, onnx_models["mlp_v1"])
    place(tmp_path, "mlp", 2, onnx_models["broken"])
    repo = ModelRepository(tmp_path)
    assert len(repo.sync(initial=True).failed) == 1
    assert repo.sync().failed == []  # same files: not tried again
    place(tmp_path, "mlp", 2, onnx_models["mlp_v2"])
    repo.sync()
    assert [m.version for m in repo.sync().loaded] == [2]


def test_removed_version_is_unloaded_and_the_previous_one_served(tmp_path, onnx_models):
    import shutil

    place(tmp_path, "mlp", 1, onnx_models["mlp_v1"])
    place(tmp_path, "mlp", 2, onnx_models["mlp_v2"])
    repo = ModelRepository(tmp_path)
    repo.sync(initial=True)
    repo.sync()  # version 1's files have now been seen unchanged
    shutil.rmtree(tmp_path / "mlp" / "2")
    report = repo.sync()
    assert [m.version for m in report.unloaded] == [2] and repo.get("mlp").version == 1


def test_directories_that_are_not_version_numbers_are_ignored(tmp_path, onnx_models):
    place(tmp_path, "mlp", 1, onnx_models["mlp_v1"])
    place(tmp_path, "mlp", ".incoming-2", onnx_models["mlp_v2"])
    place(tmp_path, "mlp", "2.partial", onnx_models["mlp_v2"])
    repo = ModelRepository(tmp_path)
    repo.sync(initial=True)
    assert states(repo, "mlp") == {1: "AVAILABLE"}


def test_version_with_two_model_files_is_refused(tmp_path, onnx_models):
    target = place(tmp_path, "mlp", 1, onnx_models["mlp_v1"]).parent
    (target / "model.tflite").write_bytes(b"TFL3")
    repo = ModelRepository(tmp_path)
    report = repo.sync(initial=True)
    assert "holds both model.onnx and model.tflite; keep one" in report.failed[0][2]


def test_version_without_a_model_file_waits_for_one(tmp_path):
    (tmp_path / "mlp" / "1").mkdir(parents=True)
    repo = ModelRepository(tmp_path)
    repo.sync(initial=True)
    status = repo.status("mlp")[0].to_json()
    assert status["state"] == "START" and "waiting for model.onnx or model.tflite" in status["status"]["error_message"]


def test_missing_model_directory_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="model directory .*absent does not exist"):
        ModelRepository(tmp_path / "absent").sync()


def test_inspect_model_measures_sparsity_and_reads_declared_metadata(tmp_path, onnx_models):
    path = place(tmp_path, "mlp", 2, onnx_models["mlp_v2"], metadata={"sparsity": 0.5, "quantization": "none"})
    info = inspect_model(path, "onnx")
    assert info.weight_sparsity == 0.5  # 28 of the 56 weight entries are zero
    assert info.quantization == "none"
    assert info.size_bytes == path.stat().st_size and 0 < info.gzip_size_bytes < info.size_bytes
    assert info.declared == {"sparsity": 0.5, "quantization": "none"}


def test_a_model_with_external_data_is_measured_with_its_data_file_and_runs(tmp_path):
    torch = pytest.importorskip("torch")
    import numpy as np

    from prunekit.serve.runtimes import OnnxRuntime
    from prunekit.torch import export_onnx

    model = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.ReLU(), torch.nn.Linear(64, 3)).eval()
    version = tmp_path / "mlp" / "1"
    version.mkdir(parents=True)
    path = version / "model.onnx"
    export_onnx(model, torch.zeros(1, 4), path, external_data=True)  # what models over 2 GB get
    data = version / "model.onnx.data"
    info = inspect_model(path, "onnx")
    assert info.size_bytes == path.stat().st_size + data.stat().st_size
    assert data.stat().st_size >= 4 * (4 * 64 + 64 * 3)  # the weight matrices (small biases may stay inline)
    x = np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)
    (output,) = OnnxRuntime(path).run({OnnxRuntime(path).inputs[0].name: x}).values()
    np.testing.assert_allclose(output, model(torch.from_numpy(x)).detach().numpy(), atol=1e-5)
    data.unlink()
    with pytest.raises(ConfigError, match="model.onnx.data"):
        inspect_model(path, "onnx")


def test_unreadable_metadata_json_refuses_the_version(tmp_path, onnx_models):
    target = place(tmp_path, "mlp", 1, onnx_models["mlp_v1"]).parent
    (target / "metadata.json").write_text("{not json")
    report = ModelRepository(tmp_path).sync(initial=True)
    assert "metadata.json: not a readable JSON file" in report.failed[0][2]
