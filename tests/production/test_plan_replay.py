"""A crafted plan can only resize modules of the model; it can never reach anything process-wide."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from prunekit.errors import CorruptFileError, StateMismatchError
from prunekit.torch.structured.plan import PLAN_FORMAT, apply_plan, load_pruned, save_pruned, validate_plan


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def _plan(attributes=(), tensors=None) -> dict:
    return {"format": PLAN_FORMAT, "version": 1, "model": "Sequential", "tensors": tensors or {}, "attributes": list(attributes)}


@pytest.mark.parametrize(
    "attr",
    [
        {"module": "0", "name": "__class__.__base__.__call__", "old": 0, "value": 1},
        {"module": "0", "name": "_parameters", "old": 0, "value": 1},
        {"module": "__class__", "name": "in_features", "old": 0, "value": 1},
    ],
)
def test_dunder_and_private_attributes_are_refused_and_nothing_changes(attr):
    model, call = _net(), nn.Module.__call__
    with pytest.raises(CorruptFileError, match="only set public attributes"):
        apply_plan(model, _plan([attr]))
    assert nn.Module.__call__ is call and model[0].in_features == 4


def test_an_attribute_reaching_a_python_module_is_refused():
    model = _net()
    model.helper = json  # type: ignore[assignment]  # a Python module hanging off a model
    with pytest.raises(CorruptFileError, match="reaches a module"):
        apply_plan(model, _plan([{"module": "", "name": "helper.decoder.scanstring", "old": 0, "value": 1}]))


def test_values_must_keep_their_type():
    with pytest.raises(CorruptFileError, match="same type"):
        apply_plan(_net(), _plan([{"module": "0", "name": "in_features", "old": 4, "value": "evil"}]))
    with pytest.raises(CorruptFileError, match="same type"):
        apply_plan(_net(), _plan([{"module": "0", "name": "forward", "old": 0, "value": 1}]))
    with pytest.raises(CorruptFileError, match="non-negative"):
        apply_plan(_net(), _plan([{"module": "0", "name": "in_features", "old": 4, "value": -1}]))


def test_a_well_formed_plan_still_replays():
    model = _net()
    keep = {"0.weight": {"shape": [3, 4], "keep": {"0": [0, 2]}}, "0.bias": {"shape": [3], "keep": {"0": [0, 2]}},
            "2.weight": {"shape": [2, 3], "keep": {"1": [0, 2]}}}  # fmt: skip
    attributes = [
        {"module": "0", "name": "out_features", "old": 3, "value": 2},
        {"module": "2", "name": "in_features", "old": 3, "value": 2},
    ]
    apply_plan(model, _plan(attributes, keep))
    assert model[0].out_features == 2 and tuple(model[2].weight.shape) == (2, 2)


@pytest.mark.parametrize(
    "plan, field",
    [
        ({"format": PLAN_FORMAT, "version": "x", "tensors": {}, "attributes": []}, "'version'"),
        ({"format": PLAN_FORMAT, "version": 1, "attributes": []}, "'tensors'"),
        ({"format": PLAN_FORMAT, "version": 1, "tensors": {}}, "'attributes'"),
        (_plan(tensors={"0.weight": {"shape": [3, -4], "keep": {}}}), "'tensors.0.weight.shape'"),
        (_plan(tensors={"0.weight": {"shape": [3, 2**62], "keep": {}}}), "'tensors.0.weight.shape'"),
        (_plan(tensors={"0.weight": {"shape": [3, 4], "keep": {"0": [0, 7]}}}), "'tensors.0.weight.keep.0'"),
        (_plan(tensors={"0.weight": {"shape": [3, 4], "keep": {"5": [0]}}}), "'tensors.0.weight.keep'"),
        (_plan([{"module": "0"}]), "'attributes[0]'"),
    ],
)
def test_malformed_plans_name_the_field(plan, field):
    with pytest.raises(CorruptFileError, match=field.replace("[", r"\[").replace("]", r"\]")):
        validate_plan(plan)


def test_load_pruned_names_the_file_of_a_crafted_plan(tmp_path):
    from safetensors.torch import save_model

    path = tmp_path / "crafted.safetensors"
    crafted = _plan([{"module": "0", "name": "__class__.__base__.__call__", "old": 0, "value": 1}])
    save_model(_net(), str(path), metadata={"prunekit_structured_plan": json.dumps(crafted)})
    with pytest.raises(CorruptFileError, match="crafted.safetensors"):
        load_pruned(path, _net)


def test_a_plan_for_another_architecture_is_still_a_state_mismatch(tmp_path):
    path = save_pruned(_net(), tmp_path / "ok.safetensors")
    with pytest.raises(StateMismatchError):
        apply_plan(nn.Sequential(nn.Linear(4, 3)), _plan([{"module": "2", "name": "in_features", "old": 3, "value": 2}]))
    assert load_pruned(path, _net)[0].in_features == 4
