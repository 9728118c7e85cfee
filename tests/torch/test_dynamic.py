"""DynamicPruner (SET, RigL): fixed nonzeros, exact drop and growth, zeroed regrowth, errors, state."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit import ConfigError, PolynomialDecay
from prunekit.dynamic import turnover
from prunekit.torch import NM, Blocks, DigitsCNN, DigitsMLP, Pruner
from prunekit.torch.unstructured.dynamic import DynamicPruner


def _batches(steps: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(16, 1, 8, 8, generator=generator), torch.randint(0, 10, (16,), generator=generator)) for _ in range(steps)
    ]


def _train(model: nn.Module, pruner: Pruner, optimizer: torch.optim.Optimizer, steps: int, on_step=None) -> None:
    for x, y in _batches(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        before = {n: int(m.sum()) for n, m in pruner.masks.items()}
        pruner.step()
        if on_step is not None:
            on_step(before)


@pytest.mark.parametrize("regrow", ["set", "rigl"])
@pytest.mark.parametrize("pattern", ["unstructured", Blocks((1, 4))])
def test_nonzeros_of_every_layer_are_identical_before_and_after_every_update(regrow, pattern):
    torch.manual_seed(0)
    model = DigitsMLP()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    pruner = DynamicPruner(model, 0.9, regrow=regrow, end_step=40, update_interval=5, pattern=pattern, optimizer=optimizer)
    pruner.prune()
    expected = {n: int(m.sum()) for n, m in pruner.masks.items()}

    def check(before):
        assert before == expected
        assert {n: int(m.sum()) for n, m in pruner.masks.items()} == expected

    _train(model, pruner, optimizer, 45, check)
    assert [record["step"] for record in pruner.history] == [5, 10, 15, 20, 25, 30, 35]
    for record in pruner.history:
        assert record["nonzeros"] == expected
        assert record["dropped"] == record["regrown"]
    assert pruner.history[0]["regrown"]["fc1.weight"] > 0
    assert 0 < pruner.history[-1]["turnover"] < 1


def test_nm_regrowth_keeps_two_of_every_four_in_every_group():
    torch.manual_seed(0)
    model = DigitsMLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pruner = Pruner(model, 0.5, regrow="rigl", pattern=NM(2, 4), end_step=30, update_interval=5, optimizer=optimizer)
    pruner.prune()
    _train(model, pruner, optimizer, 30)
    for name, mask in pruner.masks.items():
        assert (mask.reshape(mask.shape[0], -1, 4).sum(dim=2) == 2).all(), name
    assert sum(pruner.history[0]["regrown"].values()) > 0


def test_global_scope_keeps_the_total_and_layers_trade():
    torch.manual_seed(0)
    model = DigitsMLP()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    pruner = DynamicPruner(model, 0.9, regrow="rigl", scope="global", end_step=40, update_interval=5, optimizer=optimizer)
    pruner.prune()
    total = sum(int(m.sum()) for m in pruner.masks.values())
    per_layer = {n: int(m.sum()) for n, m in pruner.masks.items()}
    _train(model, pruner, optimizer, 40)
    assert sum(int(m.sum()) for m in pruner.masks.values()) == total
    assert {n: int(m.sum()) for n, m in pruner.masks.items()} != per_layer


def _hand_built(regrow: str, optimizer_class=torch.optim.SGD, **optimizer_options):
    """A 4x6 Linear at 50 % sparsity whose weights and masks are known, with an update at step 0."""
    model = nn.Sequential(nn.Linear(6, 4, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(
            torch.arange(1, 25, dtype=torch.float32).reshape(4, 6) * torch.tensor([1.0, -1.0] * 12).reshape(4, 6)
        )
    optimizer = optimizer_class(model.parameters(), **optimizer_options)
    pruner = DynamicPruner(
        model, 0.5, regrow=regrow, begin_step=0, end_step=10, update_interval=10, drop_fraction=0.25, optimizer=optimizer
    )
    pruner.prune()  # keeps |w| 13..24: rows 2 and 3
    return model, optimizer, pruner


def test_dropped_weights_are_exactly_the_smallest_magnitude_active_ones():
    model, optimizer, pruner = _hand_built("set", lr=0.0)
    before = pruner.masks["0.weight"].clone()
    assert before[2:].all() and not before[:2].any()
    model(torch.ones(1, 6)).sum().backward()
    optimizer.step()
    pruner.step()  # drops round(0.25 * 12) = 3: |w| 13, 14, 15
    after = pruner.masks["0.weight"]
    # a dropped weight is inactive now, or was regrown at once and restarted at 0 (every kept weight is nonzero)
    dropped = before & (~after | (model[0].weight.detach() == 0))
    assert dropped.reshape(-1).nonzero().reshape(-1).tolist() == [12, 13, 14]
    assert pruner.history[0]["dropped"] == pruner.history[0]["regrown"] == {"0.weight": 3}
    assert int(after.sum()) == 12


def test_rigl_regrows_exactly_the_top_gradient_inactive_positions():
    model, optimizer, pruner = _hand_built("rigl", lr=0.0)
    grad = torch.zeros(4, 6)
    grad[0, 5], grad[1, 0], grad[1, 3] = 3.0, 5.0, 4.0  # the three largest among the inactive rows 0 and 1
    grad[2:] = 100.0  # active: never a growth candidate unless dropped
    grad[2, 0:3] = 0.0  # the three weights dropped (|w| 13, 14, 15) have no gradient
    model[0].weight.grad = grad.clone()
    optimizer.step()
    pruner.step()
    mask = pruner.masks["0.weight"]
    expected = torch.zeros(4, 6, dtype=torch.bool)
    expected[2:] = True
    expected[2, 0:3] = False
    expected[0, 5] = expected[1, 0] = expected[1, 3] = True
    assert torch.equal(mask, expected)
    assert pruner.history[0]["regrown"] == {"0.weight": 3}


def test_regrown_weights_and_their_adam_moments_start_at_zero():
    torch.manual_seed(0)
    model = DigitsMLP()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    pruner = DynamicPruner(model, 0.9, regrow="rigl", begin_step=3, end_step=10, update_interval=10, optimizer=optimizer)
    pruner.prune()
    batches = _batches(4)
    for step, (x, y) in enumerate(batches):  # noqa: B007
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        before = {n: m.clone() for n, m in pruner.masks.items()}
        pruner.step()
    assert step == 3 and len(pruner.history) == 1
    for name, mask in pruner.masks.items():
        grown = mask & ~before[name]
        assert grown.any()
        param = pruner.params[name]
        assert (param.detach()[grown] == 0).all()
        state = optimizer.state[param]
        assert (state["exp_avg"][grown] == 0).all() and (state["exp_avg_sq"][grown] == 0).all()
        assert (param.detach()[~mask] == 0).all()


def test_a_weight_dropped_and_regrown_at_once_restarts_at_zero_with_zero_momentum_and_trains_again():
    model, optimizer, pruner = _hand_built("rigl", lr=0.1, momentum=0.9)
    grad = torch.full((4, 6), 0.5)
    grad[2:] = 1.0  # the three dropped weights (row 2, columns 0-2) have the largest gradients: they come back
    model[0].weight.grad = grad.clone()
    optimizer.step()
    before = pruner.masks["0.weight"].clone()
    momentum = optimizer.state[model[0].weight]["momentum_buffer"]
    assert (momentum[2, 0:3] == 1.0).all()
    pruner.step()
    assert torch.equal(pruner.masks["0.weight"], before)
    assert pruner.history[0]["dropped"] == pruner.history[0]["regrown"] == {"0.weight": 3}
    weight = model[0].weight.detach()
    assert (weight[2, 0:3] == 0).all() and (momentum[2, 0:3] == 0).all()
    assert torch.equal(weight[2, 3:], torch.tensor([-16.0, 17.0, -18.0]) - 0.1)  # the others kept their values
    model[0].weight.grad = grad.clone()
    optimizer.step()
    pruner.step()
    assert torch.allclose(model[0].weight.detach()[2, 0:3], torch.full((3,), -0.1))  # trainable again, from zero


def test_pruner_with_regrow_set_or_rigl_is_a_dynamic_pruner_and_a_bool_keeps_the_old_meaning():
    model = DigitsMLP()
    assert type(Pruner(model, 0.5, regrow="set", end_step=1000)) is DynamicPruner
    assert type(Pruner(model, 0.5, regrow=True)) is Pruner
    assert type(Pruner(model, 0.5)) is Pruner


def test_gradual_pruning_then_regrowth_starts_after_the_schedule_ends():
    torch.manual_seed(0)
    model = DigitsMLP()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    schedule = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=20, frequency=5)
    pruner = DynamicPruner(model, schedule, regrow="set", end_step=50, update_interval=10, optimizer=optimizer)
    assert pruner.regrowth.begin_step == 30
    _train(model, pruner, optimizer, 50)
    assert [r["step"] for r in pruner.history] == [30, 40]
    assert {n: round(1 - float(m.float().mean()), 4) for n, m in pruner.masks.items()} == dict.fromkeys(pruner.masks, 0.8)


def test_erdos_renyi_kernel_distribution_reaches_the_overall_sparsity():
    model = DigitsCNN()
    pruner = DynamicPruner(model, 0.9, regrow="rigl", end_step=1000, distribution="erdos_renyi_kernel")
    pruner.prune()
    kept = sum(int(m.sum()) for m in pruner.masks.values())
    total = sum(m.numel() for m in pruner.masks.values())
    assert abs(kept - round(0.1 * total)) <= len(pruner.masks)
    assert pruner.masks["conv1.weight"].all()  # 32x1x3x3: too small to thin, kept dense
    assert float(pruner.masks["fc2.weight"].float().mean()) > float(pruner.masks["fc1.weight"].float().mean())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"schedule": PolynomialDecay(0.0, 0.9, 0, 100, frequency=10), "begin_step": 50},
            "changes sparsity during the regrowth phase",
        ),
        ({"drop_fraction": 1.5}, "drop_fraction should be in (0, 1)"),
        ({"update_interval": 0}, "update_interval should be an integer >= 1"),
        ({"regrow": "random"}, "regrow should be one of ('set', 'rigl')"),
        ({"schedule": 0.9995}, "'fc3.weight' has 640 weights: at sparsity 0.9995 it keeps none"),
        ({"scope": "global", "distribution": "erdos_renyi"}, "use scope='layer' with it"),
        ({"importance": "taylor"}, "drops by magnitude"),
        ({"end_step": 5, "update_interval": 10}, "raise end_step"),
        ({"end_step": None}, "regrow='rigl' needs end_step"),
    ],
)
def test_bad_settings_are_refused_naming_them(kwargs, message):
    settings = {"schedule": 0.9, "regrow": "rigl", "end_step": 300, **kwargs}
    schedule = settings.pop("schedule")
    with pytest.raises(ConfigError) as error:
        DynamicPruner(DigitsMLP(), schedule, **settings)
    assert message in str(error.value)


def test_rigl_without_an_optimizer_step_between_updates_is_refused():
    model, optimizer, pruner = _hand_built("rigl", lr=0.0)
    pruner.regrowth = type(pruner.regrowth)("rigl", end_step=10, update_interval=1, drop_fraction=0.25, begin_step=0)
    model(torch.ones(1, 6)).sum().backward()
    optimizer.step()
    pruner.step()
    with pytest.raises(ConfigError) as error:
        pruner.step()  # step 1 is an update, but no optimizer step ran since step 0
    assert "no optimizer step ran since the previous update" in str(error.value)


def test_state_dict_resumes_masks_history_and_turnover():
    torch.manual_seed(0)
    model = DigitsMLP()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    pruner = DynamicPruner(model, 0.9, regrow="set", end_step=40, update_interval=5, optimizer=optimizer)
    pruner.prune()
    _train(model, pruner, optimizer, 12)
    state = pruner.state_dict()
    other = DynamicPruner(model, 0.9, regrow="set", end_step=40, update_interval=5)
    other.load_state_dict(state)
    assert other.step_count == 12 and other.history == pruner.history
    assert all(torch.equal(other.masks[n], pruner.masks[n]) for n in pruner.masks)
    pruner.detach()
    other.attach(optimizer)
    _train(model, other, optimizer, 4)
    assert [record["step"] for record in other.history] == [5, 10, 15]
    initial = {n: m.numpy() for n, m in state["dynamic"]["initial"].items()}  # turnover counts from the first update
    current = {n: m.numpy() for n, m in other.masks.items()}
    assert other.history[-1]["turnover"] == pytest.approx(turnover(initial, current))
