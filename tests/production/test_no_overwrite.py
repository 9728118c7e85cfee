"""Commands never write over their own inputs."""

from __future__ import annotations

import pytest

from prunekit.cli import main
from prunekit.core.paths import refuse_overwriting_inputs
from prunekit.errors import ConfigError
from prunekit.torch.deploy.compare import artifact_names


def test_export_refuses_an_out_folder_holding_its_input_under_an_artifact_name(tmp_path, capsys):
    model = tmp_path / "pruned.compact-fp32.safetensors"
    model.write_bytes(b"the user's only copy")
    code = main(["export", str(model), "--factory", "prunekit.torch:DigitsCNN", "--out", str(tmp_path)])
    assert code == 2
    assert f"{model} would overwrite the input file" in capsys.readouterr().err
    assert model.read_bytes() == b"the user's only copy"


def test_export_refuses_a_json_path_that_is_the_dense_weights(tmp_path, capsys):
    dense = tmp_path / "dense.pt"
    dense.write_bytes(b"dense")
    code = main(["export", str(tmp_path / "m.pt"), "--factory", "prunekit.torch:DigitsCNN", "--dense", str(dense),
                 "--out", str(tmp_path / "o"), "--json", str(dense)])  # fmt: skip
    assert code == 2
    assert "would overwrite the input file" in capsys.readouterr().err and dense.read_bytes() == b"dense"


def test_inspect_refuses_to_write_its_json_over_the_model(tmp_path, capsys):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"onnx bytes")
    code = main(["inspect", str(model), "--json", str(tmp_path / "." / "model.onnx")])
    assert code == 2
    assert "would overwrite the input file" in capsys.readouterr().err
    assert model.read_bytes() == b"onnx bytes"


def test_a_symlink_to_an_input_is_the_same_file(tmp_path):
    source = tmp_path / "a.safetensors"
    source.write_bytes(b"x")
    (tmp_path / "link.safetensors").symlink_to(source)
    with pytest.raises(ConfigError, match="would overwrite the input file"):
        refuse_overwriting_inputs([tmp_path / "link.safetensors"], [source], "choose another --out")
    refuse_overwriting_inputs([tmp_path / "b.safetensors"], [source], "choose another --out")  # another name is fine


def test_artifact_names_list_what_compare_artifacts_documents():
    assert artifact_names(with_dense=False) == [
        "pruned.onnx", "pruned.int8-dynamic.onnx", "pruned.int8-static.onnx",
        "pruned.safetensors", "pruned.compact-fp32.safetensors", "pruned.compact-int8.safetensors",
    ]  # fmt: skip
    assert {"dense.onnx", "dense.safetensors"} <= set(artifact_names(with_dense=True))
