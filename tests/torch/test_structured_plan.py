"""Recorded plans, save_pruned/load_pruned, and plan composition across pruning steps."""

from __future__ import annotations

import json
import os

import pytest
import torch

from prunekit.errors import ConfigError, CorruptFileError, StateMismatchError
from prunekit.torch import DigitsCNN, DigitsMLP, load_pruned, prune_channels, save_pruned
from prunekit.torch.structured.plan import apply_plan, plan_of
from tests.assertions import assert_same_outputs
from tests.torch.structured_helpers import one_torch_thread  # noqa: F401  (autouse: one torch thread per test)

X = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))


def cnn() -> DigitsCNN:
    torch.manual_seed(0)
    return DigitsCNN().eval()


def test_plan_is_json_and_records_kept_indices_and_attributes():
    result = prune_channels(cnn(), X, 0.5)
    plan = json.loads(json.dumps(result.plan))
    kept = [i for i in range(32) if i not in result.removed["conv1"]]
    assert plan["tensors"]["conv1.weight"] == {"shape": [32, 1, 3, 3], "keep": {"0": kept}}
    assert plan["tensors"]["conv2.weight"]["keep"]["1"] == kept
    assert {"module": "conv1", "name": "out_channels", "old": 32, "value": 16} in plan["attributes"]
    assert plan_of(result.model) == result.plan


def test_save_then_load_rebuilds_the_pruned_model_from_the_original_architecture(tmp_path):
    result = prune_channels(cnn(), X, 0.5)
    path = save_pruned(result, tmp_path / "cnn.safetensors")
    loaded = load_pruned(path, DigitsCNN).eval()
    assert type(loaded) is DigitsCNN
    assert (loaded.conv1.out_channels, loaded.conv2.out_channels, loaded.fc1.out_features) == (16, 32, 64)
    with torch.no_grad():
        assert_same_outputs(loaded(X), result.model(X), atol=0)


def test_a_pruned_model_alone_saves_with_its_attached_plan(tmp_path):
    model = prune_channels(cnn(), X, 0.5).model
    save_pruned(model, tmp_path / "m.safetensors")
    loaded = load_pruned(tmp_path / "m.safetensors", DigitsCNN()).eval()
    with torch.no_grad():
        assert_same_outputs(loaded(X), model(X), atol=0)


def test_the_file_is_safetensors_with_the_plan_as_metadata(tmp_path):
    from safetensors import safe_open

    result = prune_channels(cnn(), X, 0.5)
    save_pruned(result, tmp_path / "m.safetensors")
    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as handle:
        assert json.loads(handle.metadata()["prunekit_structured_plan"]) == result.plan
        assert tuple(handle.get_tensor("conv1.weight").shape) == (16, 1, 3, 3)


def test_saving_leaves_no_temporary_file_behind(tmp_path):
    result = prune_channels(cnn(), X, 0.5)
    save_pruned(result, tmp_path / "m.safetensors")
    save_pruned(result, tmp_path / "m.safetensors")
    assert os.listdir(tmp_path) == ["m.safetensors"]


def test_loading_into_another_architecture_names_the_first_mismatching_layer(tmp_path):
    save_pruned(prune_channels(cnn(), X, 0.5), tmp_path / "m.safetensors")
    with pytest.raises(StateMismatchError, match="layer 'conv1' does not match the plan: the model has no tensor"):
        load_pruned(tmp_path / "m.safetensors", DigitsMLP)


def test_loading_into_a_narrower_model_names_the_first_different_layer_and_both_shapes(tmp_path):
    save_pruned(prune_channels(cnn(), X, 0.5), tmp_path / "m.safetensors")
    with pytest.raises(StateMismatchError, match=r"layer 'conv2'.*\(32, 32, 3, 3\).*\(64, 32, 3, 3\)"):
        load_pruned(tmp_path / "m.safetensors", lambda: DigitsCNN(channels=(32, 32)))


def test_a_file_without_a_plan_is_rejected(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CorruptFileError, match="has no prunekit plan"):
        load_pruned(tmp_path / "plain.safetensors", DigitsCNN)


def test_a_corrupted_file_is_rejected(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CorruptFileError, match="not a readable safetensors file"):
        load_pruned(tmp_path / "bad.safetensors", DigitsCNN)


def test_a_missing_file_raises_naming_it(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_pruned(tmp_path / "nope.safetensors", DigitsCNN)


def test_apply_plan_can_be_undone():
    model = cnn()
    plan = prune_channels(model, X, 0.5).plan
    undo = apply_plan(model, plan)
    assert model.conv1.out_channels == 16 and model.conv1.weight.shape[0] == 16
    undo()
    assert model.conv1.out_channels == 32 and model.conv1.weight.shape[0] == 32
    assert model.fc1.in_features == 1024


def test_a_mismatching_plan_changes_nothing():
    plan = prune_channels(cnn(), X, 0.5).plan
    model = DigitsCNN(channels=(32, 32))
    with pytest.raises(StateMismatchError):
        apply_plan(model, plan)
    assert model.conv1.weight.shape == (32, 1, 3, 3) and model.conv1.out_channels == 32


def test_two_pruning_steps_compose_into_one_plan_on_the_original(tmp_path):
    first = prune_channels(cnn(), X, 0.25)
    second = prune_channels(first.model, X, 0.25)
    assert second.model.conv1.out_channels == 18
    conv1_keep = second.plan["tensors"]["conv1.weight"]["keep"]["0"]
    assert len(conv1_keep) == 18 and set(conv1_keep) <= set(first.plan["tensors"]["conv1.weight"]["keep"]["0"])
    save_pruned(second, tmp_path / "two.safetensors")
    loaded = load_pruned(tmp_path / "two.safetensors", DigitsCNN).eval()
    with torch.no_grad():
        assert_same_outputs(loaded(X), second.model(X), atol=0)
