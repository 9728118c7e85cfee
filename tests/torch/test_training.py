"""Pruning during training: nothing revives a pruned weight, resume is bitwise, the model stays portable."""

import copy
import io
import pickle

import pytest
import torch
from torch import nn

from prunekit import ConfigError, PolynomialDecay, StateMismatchError
from prunekit.torch import DigitsCNN, DigitsMLP, Pruner, PruningCallback, fit, make_loader
from tests.assertions import assert_same_outputs, assert_sparsity

PRUNABLE = ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"]


def batch(index: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1000 + index)
    return torch.randn(16, 1, 8, 8, generator=generator), torch.randint(0, 10, (16,), generator=generator)


def train_steps(model, optimizer, pruner, steps: range) -> None:
    for index in steps:
        x, y = batch(index)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        pruner.step()


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-3),
        lambda params: torch.optim.Adam(params, lr=1e-2),
        lambda params: torch.optim.AdamW(params, lr=1e-2),
    ],
    ids=["sgd-momentum", "adam", "adamw"],
)
@pytest.mark.parametrize("attached", [True, False], ids=["attached", "step-only"])
def test_pruned_weights_stay_exactly_zero_after_100_steps(make_optimizer, attached):
    torch.manual_seed(0)
    model = DigitsCNN()
    optimizer = make_optimizer(model.parameters())
    train_steps(model, optimizer, Pruner(model, 0.0), range(5))  # build momentum before pruning
    pruner = Pruner(model, 0.8, optimizer=optimizer if attached else None)
    pruner.prune()
    pruned = {name: (model.get_parameter(name) == 0).clone() for name in PRUNABLE}
    train_steps(model, optimizer, pruner, range(100))
    for name in PRUNABLE:
        weight = model.get_parameter(name)
        assert (weight[pruned[name]] == 0).all(), f"{name}: a pruned weight was revived"
        assert_sparsity(weight, 0.8, name)


def test_attached_optimizer_state_is_zeroed_where_pruned():
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    train_steps(model, optimizer, Pruner(model, 0.0), range(3))
    pruner = Pruner(model, 0.5, optimizer=optimizer)
    pruner.prune()
    state = optimizer.state[model.fc1.weight]
    pruned = model.fc1.weight == 0
    assert (state["exp_avg"][pruned] == 0).all() and (state["exp_avg_sq"][pruned] == 0).all()


def test_attaching_an_optimizer_that_misses_pruned_parameters_is_refused():
    model = DigitsCNN()
    optimizer = torch.optim.SGD(model.fc2.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="does not update pruned parameter"):
        Pruner(model, 0.5, optimizer=optimizer)


def make_run(seed: int = 0):
    torch.manual_seed(seed)
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    schedule = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=40, frequency=10)
    return model, optimizer, Pruner(model, schedule, optimizer=optimizer, scope="global")


def test_resume_from_state_dicts_gives_bitwise_identical_weights():
    model, optimizer, pruner = make_run()
    train_steps(model, optimizer, pruner, range(60))

    first, first_opt, first_pruner = make_run()
    train_steps(first, first_opt, first_pruner, range(25))
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": first_opt.state_dict(), "pruner": first_pruner.state_dict()}, buffer)
    del first, first_opt, first_pruner  # the job is killed

    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    resumed, resumed_opt, resumed_pruner = make_run(seed=123)  # fresh weights, overwritten by the checkpoint
    resumed.load_state_dict(checkpoint["model"])
    resumed_opt.load_state_dict(checkpoint["opt"])
    resumed_pruner.load_state_dict(checkpoint["pruner"])
    assert resumed_pruner.step_count == 25
    train_steps(resumed, resumed_opt, resumed_pruner, range(25, 60))

    for (name, expected), actual in zip(model.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(expected, actual), f"{name} differs after resume"


def test_loading_pruner_state_into_another_model_names_the_parameter():
    pruner = Pruner(DigitsCNN(), 0.5)
    pruner.prune()
    with pytest.raises(
        StateMismatchError, match="'fc1.weight' has shape \\[128, 64\\] but the pruner state holds \\[128, 1024\\]"
    ):
        Pruner(DigitsMLP(), 0.5).load_state_dict(pruner.state_dict())
    with pytest.raises(StateMismatchError, match="no entry for parameter 'fc3.weight'"):
        Pruner(DigitsMLP(), 0.5, targets=["fc3"]).load_state_dict(pruner.state_dict())


def test_loading_pruner_state_with_other_shapes_names_the_parameter():
    pruner = Pruner(DigitsCNN(), 0.5)
    pruner.prune()
    with pytest.raises(StateMismatchError, match="'conv1.weight' has shape \\[16, 1, 3, 3\\]"):
        Pruner(DigitsCNN(channels=(16, 64)), 0.5).load_state_dict(pruner.state_dict())


def test_model_under_pruning_deepcopies_pickles_and_saves():
    model, optimizer, pruner = make_run()
    train_steps(model, optimizer, pruner, range(15))
    x = batch(999)[0]
    model.eval()
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert type(clone) is DigitsCNN
        assert_same_outputs(clone(x), model(x), atol=0)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    assert_same_outputs(torch.load(buffer, weights_only=False)(x), model(x), atol=0)


def test_torch_compile_trains_under_pruning_and_keeps_zeros():
    model, optimizer, pruner = make_run()
    compiled = torch.compile(model, backend="aot_eager")
    for index in range(45):
        x, y = batch(index)
        optimizer.zero_grad()
        nn.functional.cross_entropy(compiled(x), y).backward()
        optimizer.step()
        pruner.step()
    zeros = sum(int((model.get_parameter(n) == 0).sum()) for n in PRUNABLE)
    total = sum(model.get_parameter(n).numel() for n in PRUNABLE)
    assert zeros == round(0.8 * total)
    model.eval()
    assert_same_outputs(compiled(batch(0)[0]), model(batch(0)[0]), atol=1e-6)


def test_pruning_callback_steps_the_pruner_and_strips_at_the_end():
    model = DigitsMLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    pruner = Pruner(model, PolynomialDecay(0.0, 0.5, 0, 10, frequency=5), optimizer=optimizer)
    callback = PruningCallback(pruner, strip_at_end=True)
    for index in range(12):
        x, y = batch(index)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        callback.on_train_batch_end(None, None, {"loss": 0.0}, (x, y), index)  # Lightning's signature
    callback.on_train_end(None, None)
    assert pruner.stripped and pruner.step_count == 12
    for name in ("fc1.weight", "fc2.weight", "fc3.weight"):
        assert_sparsity(model.get_parameter(name), 0.5, name)


def test_fit_attaches_the_pruner_for_the_run_and_detaches_after():
    x = torch.randn(64, 1, 8, 8)
    y = torch.randint(0, 10, (64,))
    model = DigitsMLP()
    pruner = Pruner(model, PolynomialDecay(0.0, 0.75, 0, 6, frequency=2))
    history = fit(model, make_loader(x, y, batch_size=16), epochs=2, lr=1e-2, pruner=pruner, progress=False)
    assert [h["epoch"] for h in history] == [1, 2]
    assert pruner.step_count == 8 and not pruner._optimizers
    for name in ("fc1.weight", "fc2.weight", "fc3.weight"):
        assert_sparsity(model.get_parameter(name), 0.75, name)
