"""The recover-kind methods run through the registry: the handler contract (RecoverJob -> RecoveryRun) in PyTorch."""

import copy

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from prunekit import ConfigError
from prunekit.methods import get_method, list_methods
from prunekit.methods.recover import RecoverJob, RecoveryRun
from prunekit.torch import DigitsMLP, evaluate, fit, make_loader, prune_unstructured
from tests.torch.pruned_digits import digits


def test_recover_methods_are_registered_for_both_frameworks():
    methods = list_methods(kind="recover")
    assert [m.name for m in methods] == ["finetune", "distill", "qat", "pqat"]
    assert all(m.frameworks == ("torch", "keras") for m in methods)
    assert get_method("distill").options(alpha=0.7)["temperature"] == 1.0


def _trained_mlp():
    split = digits()
    torch.manual_seed(0)
    model = DigitsMLP()
    fit(model, make_loader(split.x_train, split.y_train, seed=0), epochs=4, lr=3e-3, progress=False)
    return model


def test_distill_handler_recovers_a_pruned_model_from_its_teacher():
    split = digits()
    teacher = _trained_mlp()
    student = prune_unstructured(copy.deepcopy(teacher), 0.9)
    test = make_loader(split.x_test, split.y_test, shuffle=False)
    before = evaluate(student, test)
    method = get_method("distill")
    job = RecoverJob(student, split.x_train, split.y_train, method.options(epochs=2), teacher=teacher)
    run = method.handler("torch")(job)
    assert isinstance(run, RecoveryRun) and run.model is student and len(run.history) == 2
    assert evaluate(student, test) > before
    with pytest.raises(ConfigError, match="teacher"):
        method.handler("torch")(RecoverJob(student, split.x_train, split.y_train, method.options(epochs=1)))


def test_pqat_handler_writes_an_int8_onnx_with_the_pruned_zeros(tmp_path):
    split = digits()
    model = prune_unstructured(_trained_mlp(), 0.8)
    zeros = {n: int((p == 0).sum()) for n, p in model.named_parameters() if n.endswith("weight")}
    method = get_method("pqat")
    job = RecoverJob(model, split.x_train, split.y_train, method.options("torch", epochs=1), export_path=tmp_path / "m.onnx")
    run = method.handler("torch")(job)
    assert run.artifact == tmp_path / "m.onnx" and run.zeros == zeros and run.sqnr_db > 30
    stored = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(run.artifact)).graph.initializer}
    assert {n: int((stored[f"{n}_quantized"] == 0).sum()) for n in zeros} == zeros
    assert all(not m._forward_hooks for m in run.model.modules())
    with pytest.raises(ConfigError, match="prune first"):
        method.handler("torch")(RecoverJob(DigitsMLP(), split.x_train, split.y_train, method.options("torch", epochs=1)))
    assert np.isfinite(run.history[0]["loss"])


def test_distill_handler_passes_penultimate_features_and_the_feature_loss_through():
    split = digits()
    teacher = _trained_mlp()
    student = prune_unstructured(copy.deepcopy(teacher), 0.9)
    method = get_method("distill")
    assert method.options("torch")["feature_loss"] == "mse"
    options = method.options(epochs=1, features="penultimate", feature_loss="cosine", feature_weight=0.5)
    run = method.handler("torch")(RecoverJob(student, split.x_train, split.y_train, options, teacher=teacher))
    assert len(run.history) == 1 and run.history[0]["loss"] > 0
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in run.model.modules())
    with pytest.raises(ConfigError, match="feature_loss should be one of"):
        method.handler("torch")(
            RecoverJob(student, split.x_train, split.y_train, method.options(epochs=1, feature_loss="l1"), teacher=teacher)
        )


def test_pqat_registry_options_reach_the_qat_controller(monkeypatch):
    import prunekit.torch.recover.handlers as handlers
    from tests.torch.pruned_digits import pruned_cnn

    seen = {}
    real = handlers.qat

    def spy(*args, **kwargs):
        controller = real(*args, **kwargs)
        seen.update(ranges=controller.freeze_ranges_after, bn=controller.freeze_bn_after, steps=controller.steps)
        return controller

    monkeypatch.setattr(handlers, "qat", spy)
    split = digits()
    options = get_method("pqat").options("torch", epochs=1, freeze_ranges_after=3, freeze_bn_after=2)
    get_method("pqat").handler("torch")(RecoverJob(pruned_cnn(), split.x_train[:256], split.y_train[:256], options))
    assert seen == {"ranges": 3, "bn": 2, "steps": 4}  # 256 images in batches of 64
