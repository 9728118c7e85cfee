"""Iterative structured pruning, and the digits acceptance: 50% of the channels removed plus a
fine-tune stays within one point of the dense accuracy."""

from __future__ import annotations

import functools

import pytest
import torch

from prunekit.data import load_digits
from prunekit.errors import ConfigError
from prunekit.torch import DigitsCNN, evaluate, fit, load_pruned, make_loader, prune_channels, save_pruned
from prunekit.torch.structured.iterative import prune_channels_iteratively, step_ratios
from tests.assertions import assert_same_outputs
from tests.torch.structured_helpers import one_torch_thread  # noqa: F401  (autouse: one torch thread per test)

X = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(5))


def test_step_ratios_reach_the_target_in_equal_steps_of_the_original():
    assert step_ratios(0.5, 2) == pytest.approx([0.25, 1 / 3])
    assert step_ratios(0.6, 3) == pytest.approx([0.2, 0.25, 1 / 3])


def test_each_step_prunes_then_fine_tunes_until_the_target(tmp_path):
    torch.manual_seed(0)
    seen = []

    def fine_tune(model, step):
        seen.append((step, model.conv1.out_channels, model.conv2.out_channels, model.fc1.out_features))

    result = prune_channels_iteratively(DigitsCNN().eval(), X, 0.5, steps=2, fine_tune=fine_tune)
    assert seen == [(1, 24, 48, 96), (2, 16, 32, 64)]
    assert [(g.channels_before, g.channels_after) for g in result.report.groups] == [(32, 16), (64, 32), (128, 64)]
    assert result.report.params_before == 151_498
    save_pruned(result, tmp_path / "it.safetensors")
    loaded = load_pruned(tmp_path / "it.safetensors", DigitsCNN).eval()
    with torch.no_grad():
        assert_same_outputs(loaded(X), result.model.eval()(X), atol=0)


def test_layer_ratios_are_reached_step_by_step_too():
    result = prune_channels_iteratively(DigitsCNN().eval(), X, 0.5, steps=2, layer_ratios={"fc1": 0.25})
    assert (result.model.conv1.out_channels, result.model.fc1.out_features) == (16, 96)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"steps": 0}, "steps should be an integer >= 1"),
        (
            {"fine_tune": lambda m, s: None, "train_loader": [(X, torch.zeros(4, dtype=torch.long))]},
            "fine_tune or train_loader, not both",
        ),
        ({"inplace": True, "ratio": 1.0}, "ratio should be a number in \\[0, 1\\)"),
    ],
)
def test_iterative_arguments_are_validated(kwargs, message):
    ratio = kwargs.pop("ratio", 0.5)
    with pytest.raises(ConfigError, match=message):
        prune_channels_iteratively(DigitsCNN(), X, ratio, **kwargs)


@functools.cache
def _trained() -> tuple[dict, float]:
    torch.manual_seed(0)
    split = load_digits()
    model = DigitsCNN()
    fit(model, make_loader(split.x_train, split.y_train, batch_size=64, seed=0), epochs=6, lr=3e-3, progress=False)
    return model.state_dict(), evaluate(model, _test_loader())


def _test_loader():
    split = load_digits()
    return make_loader(split.x_test, split.y_test, batch_size=256, shuffle=False)


def _dense() -> tuple[DigitsCNN, float]:
    state, accuracy = _trained()
    model = DigitsCNN()
    model.load_state_dict(state)
    return model.eval(), accuracy


@pytest.mark.slow
def test_digits_cnn_half_channels_removed_and_fine_tuned_stays_within_one_point():
    model, dense_accuracy = _dense()
    split = load_digits()
    result = prune_channels(model, torch.from_numpy(split.x_train[:64]), 0.5)
    assert (result.model.conv1.out_channels, result.model.conv2.out_channels, result.model.fc1.out_features) == (16, 32, 64)
    assert result.report.params_ratio > 3.9 and result.report.macs_ratio > 3.9
    fit(result.model, make_loader(split.x_train, split.y_train, batch_size=64, seed=1), epochs=3, lr=1e-3, progress=False)
    accuracy = evaluate(result.model, _test_loader())
    assert dense_accuracy > 0.97
    assert accuracy >= dense_accuracy - 0.01, f"dense {dense_accuracy:.4f}, pruned + fine-tuned {accuracy:.4f}"


@pytest.mark.slow
def test_digits_cnn_iterative_half_pruning_with_fit_stays_within_one_point():
    model, dense_accuracy = _dense()
    split = load_digits()
    loader = make_loader(split.x_train, split.y_train, batch_size=64, seed=1)
    result = prune_channels_iteratively(
        model, torch.from_numpy(split.x_train[:64]), 0.5, steps=2, train_loader=loader, epochs_per_step=2, lr=1e-3
    )
    assert result.model.conv2.out_channels == 32
    accuracy = evaluate(result.model, _test_loader())
    assert accuracy >= dense_accuracy - 0.01, f"dense {dense_accuracy:.4f}, iterative {accuracy:.4f}"
