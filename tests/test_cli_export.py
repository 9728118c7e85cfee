"""``prunekit export``: weights + factory to artifacts and a table; precise errors with exit code 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from prunekit.artifacts.compact import read_compact_header
from prunekit.cli import main
from prunekit.errors import StateMismatchError
from prunekit.torch import DigitsCNN, save_compressed, save_pruned
from prunekit.torch.deploy.weights import load_weights
from prunekit.torch.structured.plan import plan_of
from tests.torch.pruned_digits import channel_pruned_cnn, dense_cnn, digits, pruned_cnn

FACTORY = "prunekit.torch:DigitsCNN"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    save_file(dense_cnn().state_dict(), str(folder / "dense.safetensors"))
    torch.save(pruned_cnn().state_dict(), folder / "pruned.pt")
    save_compressed(pruned_cnn(), folder / "pruned.compact.safetensors", plan={"method": "global magnitude"})
    torch.save({"state_dict": pruned_cnn().state_dict()}, folder / "nested.pt")
    save_pruned(channel_pruned_cnn(), folder / "channels.safetensors")
    save_compressed(channel_pruned_cnn(), folder / "channels.compact.safetensors")
    return folder


@pytest.mark.parametrize("name", ["pruned.pt", "nested.pt", "pruned.compact.safetensors"])
def test_load_weights_reads_every_weight_file_kind(weights, name):
    model = load_weights(str(weights / name), DigitsCNN)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in pruned_cnn().state_dict().items())


@pytest.mark.parametrize("name", ["channels.safetensors", "channels.compact.safetensors"])
def test_load_weights_replays_the_structured_plan_on_the_original_architecture(weights, name):
    model = load_weights(str(weights / name), DigitsCNN)
    assert model.conv1.weight.shape == channel_pruned_cnn().conv1.weight.shape
    assert plan_of(model) == plan_of(channel_pruned_cnn())


def test_plain_state_dict_of_a_channel_pruned_model_needs_its_own_architecture(tmp_path):
    save_file(channel_pruned_cnn().state_dict(), str(tmp_path / "plain.safetensors"))
    with pytest.raises(StateMismatchError, match="'conv1.weight' has shape"):
        load_weights(str(tmp_path / "plain.safetensors"), DigitsCNN)


def test_export_writes_every_artifact_the_table_and_json(weights, tmp_path, capsys):
    code = main(
        [
            "export",
            str(weights / "pruned.pt"),
            "--factory",
            FACTORY,
            "--dense",
            str(weights / "dense.safetensors"),
            "--out",
            str(tmp_path / "out"),
            "--json",
            str(tmp_path / "table.json"),
            "--repeats",
            "3",
            "--no-memory",
        ]
    )
    assert code == 0
    rows = {row["name"]: row for row in json.loads((tmp_path / "table.json").read_text())["rows"]}
    assert list(rows)[:4] == ["dense fp32", "pruned fp32", "pruned int8 dynamic", "pruned int8 static"]
    assert rows["pruned compact int8"]["size_bytes"] <= 0.06 * rows["dense fp32 state_dict"]["size_bytes"]
    for name in ("dense.onnx", "pruned.onnx", "pruned.int8-static.onnx", "pruned.compact-int8.safetensors"):
        assert (tmp_path / "out" / name).is_file()
    assert "pruned int8 static" in capsys.readouterr().out


def test_export_of_a_channel_pruned_compact_file_keeps_its_plan_and_reads_npz_data(weights, tmp_path):
    split = digits()
    np.savez(tmp_path / "data.npz", x_test=split.x_test[:100], y_test=split.y_test[:100], x_calib=split.x_val[:64])
    code = main(
        [
            "export",
            str(weights / "channels.compact.safetensors"),
            "--factory",
            FACTORY,
            "--data",
            str(tmp_path / "data.npz"),
            "--out",
            str(tmp_path / "out"),
            "--repeats",
            "2",
            "--no-memory",
        ]
    )
    assert code == 0
    header = read_compact_header(tmp_path / "out" / "pruned.compact-int8.safetensors")
    assert header.plan == plan_of(channel_pruned_cnn())
    assert header.tensors["conv1.weight"].shape == tuple(channel_pruned_cnn().conv1.weight.shape)
    assert not (tmp_path / "out" / "dense.onnx").exists()


def test_factory_of_another_architecture_exits_2_naming_the_tensor(weights, tmp_path, capsys):
    code = main(["export", str(weights / "pruned.pt"), "--factory", "prunekit.torch:DigitsMLP", "--out", str(tmp_path)])
    assert code == 2
    assert "'fc1.weight' has shape [128, 1024] in the file but [128, 64] in the model" in capsys.readouterr().err


def test_factory_that_cannot_be_imported_exits_2(weights, tmp_path, capsys):
    code = main(["export", str(weights / "pruned.pt"), "--factory", "prunekit.torch:NoSuchModel", "--out", str(tmp_path)])
    assert code == 2
    assert "has no attribute 'NoSuchModel'" in capsys.readouterr().err


def test_missing_weights_file_exits_2(tmp_path, capsys):
    assert main(["export", str(tmp_path / "none.pt"), "--factory", FACTORY]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_truncated_compact_file_exits_2_saying_it_is_truncated(weights, tmp_path, capsys):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes((weights / "pruned.compact.safetensors").read_bytes()[:-100])
    assert main(["export", str(broken), "--factory", FACTORY, "--out", str(tmp_path / "out")]) == 2
    assert "truncated" in capsys.readouterr().err


def test_npz_without_calibration_inputs_exits_2_naming_the_missing_array(weights, tmp_path, capsys):
    np.savez(tmp_path / "data.npz", x_test=np.zeros((2, 1, 8, 8), np.float32), y_test=np.zeros(2, np.int64))
    code = main(["export", str(weights / "pruned.pt"), "--factory", FACTORY, "--data", str(tmp_path / "data.npz")])
    assert code == 2
    assert "x_calib" in capsys.readouterr().err
