"""prune_channels: physically smaller models, allocation options, surgery, and bad input."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError, LayerNotFoundError
from prunekit.torch import DigitsCNN, count_macs, count_params, prune_channels, remove_channels
from prunekit.torch.structured.prune import PruningShortfallWarning
from tests.assertions import assert_same_outputs
from tests.legacy_onnx import export_legacy_onnx
from tests.torch.structured_helpers import one_torch_thread  # noqa: F401  (autouse: one torch thread per test)

X = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def cnn() -> DigitsCNN:
    torch.manual_seed(0)
    model = DigitsCNN().eval()
    with torch.no_grad():
        for bn in (model.bn1, model.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    return model


def channels(model: DigitsCNN) -> tuple[int, int, int, int]:
    return model.conv1.out_channels, model.conv2.out_channels, model.fc1.out_features, model.fc2.out_features


def test_half_ratio_halves_every_group_and_keeps_the_classifier():
    result = prune_channels(cnn(), X, 0.5)
    assert channels(result.model) == (16, 32, 64, 10)
    assert result.model.fc1.in_features == 32 * 16
    assert result.model(X).shape == (4, 10)


def test_users_model_is_left_untouched():
    model = cnn()
    state = copy.deepcopy(model.state_dict())
    prune_channels(model, X, 0.5)
    assert channels(model) == (32, 64, 128, 10)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_inplace_prunes_the_given_model():
    model = cnn()
    result = prune_channels(model, X, 0.25, inplace=True)
    assert result.model is model
    assert channels(model) == (24, 48, 96, 10)


def test_pruned_layers_are_plain_modules_with_matching_attributes():
    model = prune_channels(cnn(), X, 0.5).model
    assert type(model.conv2) is nn.Conv2d and type(model.bn2) is nn.BatchNorm2d and type(model.fc1) is nn.Linear
    assert (model.conv2.in_channels, model.conv2.out_channels) == (16, 32)
    assert model.bn2.num_features == 32 and model.bn2.running_mean.shape == (32,)
    assert tuple(model.fc1.weight.shape) == (64, 512)


def test_l1_removes_the_filters_with_the_smallest_group_norm():
    model = cnn()
    with torch.no_grad():
        model.conv1.weight[[3, 7, 11]] *= 1e-4
        model.conv1.bias[[3, 7, 11]] = 0.0
        model.bn1.weight[[3, 7, 11]] = 1e-4
        model.bn1.bias[[3, 7, 11]] = 0.0
        model.conv2.weight[:, [3, 7, 11]] *= 1e-4
    result = prune_channels(model, X, 3 / 32, layer_ratios={"conv2": 0.0, "fc1": 0.0})
    assert result.removed == {"conv1": [3, 7, 11]}


def test_kept_weights_biases_and_running_statistics_are_carried_over():
    model = cnn()
    result = prune_channels(model, X, 0.5)
    kept = [i for i in range(32) if i not in result.removed["conv1"]]
    pruned = result.model
    assert torch.equal(pruned.conv1.weight, model.conv1.weight[kept])
    assert torch.equal(pruned.conv1.bias, model.conv1.bias[kept])
    assert torch.equal(pruned.bn1.running_mean, model.bn1.running_mean[kept])
    assert torch.equal(pruned.bn1.running_var, model.bn1.running_var[kept])
    kept2 = [i for i in range(64) if i not in result.removed["conv2"]]
    assert torch.equal(pruned.conv2.weight, model.conv2.weight[kept2][:, kept])


def test_pruning_silenced_channels_preserves_outputs():
    model = cnn()
    with torch.no_grad():
        for i in (0, 5, 9):
            model.conv2.weight[i] = 0
            model.conv2.bias[i] = 0
            model.bn2.weight[i] = 0
            model.bn2.bias[i] = 0
    result = remove_channels(model, X, {"conv2": [0, 5, 9]})
    assert result.model.conv2.out_channels == 61
    assert_same_outputs(result.model(X), model(X), atol=1e-5)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, "half", True])
def test_ratio_outside_zero_one_raises_and_model_is_untouched(ratio):
    model = cnn()
    with pytest.raises(ConfigError, match="ratio should be a number in \\[0, 1\\)"):
        prune_channels(model, X, ratio)
    assert channels(model) == (32, 64, 128, 10)


def test_every_argument_error_is_reported_at_once():
    with pytest.raises(ConfigError) as info:
        prune_channels(cnn(), X, 2.0, scope="everywhere", round_to=0, layer_ratios={"conv1": 1.0})
    message = str(info.value)
    for expected in ("ratio should", "scope should", "round_to should", "layer_ratios['conv1']"):
        assert expected in message


def test_unmatched_layer_name_raises_layer_not_found_with_a_suggestion():
    with pytest.raises(LayerNotFoundError, match=r"'conv3' matches no layer.*conv1"):
        prune_channels(cnn(), X, 0.5, ignore_outputs=["conv3"])


def test_inputs_that_do_not_run_the_model_raise_and_leave_it_untouched():
    model = cnn()
    with pytest.raises(ConfigError, match="example_inputs"):
        prune_channels(model, torch.zeros(2, 3, 8, 8), 0.5, inplace=True)
    assert channels(model) == (32, 64, 128, 10)


def test_layer_ratios_by_glob_override_the_uniform_ratio():
    result = prune_channels(cnn(), X, 0.5, layer_ratios={"conv*": 0.25, "fc1": 0.0})
    assert channels(result.model) == (24, 48, 128, 10)


def test_round_to_keeps_channel_counts_multiples_of_it():
    result = prune_channels(cnn(), X, 0.4, round_to=8)
    assert channels(result.model) == (16, 40, 80, 10)


def test_ignore_outputs_keeps_that_layers_output_channels():
    with pytest.warns(PruningShortfallWarning, match=r"left alone: conv2: user ignore \(ignore_outputs='conv2'\)"):
        result = prune_channels(cnn(), X, 0.5, ignore_outputs=["conv2"])
    assert channels(result.model) == (16, 64, 64, 10)
    assert [g.skipped for g in result.report.groups] == ["", "ignore_outputs='conv2'", ""]


def test_ignore_inputs_keeps_that_layers_input_channels():
    with pytest.warns(PruningShortfallWarning, match=r"left alone: conv2: user ignore \(ignore_inputs='fc1'\)"):
        result = prune_channels(cnn(), X, 0.5, ignore_inputs=["fc1"])
    assert channels(result.model) == (16, 64, 64, 10)
    assert result.model.fc1.in_features == 1024


def test_global_scope_removes_the_ratio_overall_but_caps_each_group():
    model = cnn()
    with torch.no_grad():  # 120 of fc1's 128 neurons are near zero: far below every other channel
        model.fc1.weight[8:] *= 1e-3
        model.fc1.bias[8:] *= 1e-3
        model.fc2.weight[:, 8:] *= 1e-3

    def by_magnitude(group):
        return sum(group.reduce(t.abs(), m) for m, t in group.tensors()).numpy()

    result = prune_channels(model, X, 0.5, scope="global", max_layer_ratio=0.75, importance=by_magnitude)
    removed = {g.name: g.channels_before - g.channels_after for g in result.report.groups}
    assert sum(removed.values()) == round(0.5 * (32 + 64 + 128))
    assert removed["fc1"] == 96


def test_report_counts_match_the_measured_model():
    model = cnn()
    result = prune_channels(model, X, 0.5)
    report = result.report
    assert report.params_before == count_params(model) == 151_498
    assert report.params_after == count_params(result.model)
    assert report.macs_after == count_macs(result.model, X).total
    assert report.macs_before == count_macs(model, X).total
    layer = next(entry for entry in report.layers if entry.name == "conv2")
    assert (layer.params_before, layer.params_after) == (64 * 32 * 9 + 64, 32 * 16 * 9 + 32)
    assert (layer.out_channels_before, layer.out_channels_after) == (64, 32)
    assert [(g.channels_before, g.channels_after) for g in report.groups] == [(32, 16), (64, 32), (128, 64)]


def test_remove_channels_removes_exactly_the_given_indices():
    result = remove_channels(cnn(), X, {"fc1": [1, 2, 3], "conv1": [0]})
    assert channels(result.model) == (31, 64, 125, 10)
    assert result.removed == {"conv1": [0], "fc1": [1, 2, 3]}


def test_removing_every_channel_of_a_group_raises_and_leaves_the_model_untouched():
    model = cnn()
    with pytest.raises(ConfigError, match="all 32 channels of group 'conv1'"):
        remove_channels(model, X, {"conv1": list(range(32))}, inplace=True)
    assert channels(model) == (32, 64, 128, 10)


def test_unknown_group_name_raises():
    with pytest.raises(ConfigError, match="no channel group named 'conv9'"):
        remove_channels(cnn(), X, {"conv9": [0]})


class LiteralSplit(nn.Module):
    """Splits channels with a literal size: pruning them would change what the split returns."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(4, 2, 1)
        self.c = nn.Conv2d(4, 2, 1)
        self.d = nn.Conv2d(3, 6, 1)
        self.e = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        left, right = torch.split(self.a(x), 4, dim=1)
        return self.b(left) + self.c(right) + self.e(torch.relu(self.d(x)))


def test_a_literal_split_size_is_found_by_verification_and_its_channels_kept():
    torch.manual_seed(0)
    model = LiteralSplit().eval()
    x = torch.randn(1, 3, 4, 4)
    with pytest.warns(PruningShortfallWarning, match="left alone: a .*unsupported op split"):
        result = prune_channels(model, x, 0.5)
    assert result.model.a.out_channels == 8
    assert result.model.d.out_channels == 3
    assert result.model(x).shape == (1, 2, 4, 4)
    assert any("split" in note for note in result.report.notes)


def test_strict_mode_raises_on_a_literal_split_and_rolls_back_inplace():
    model = LiteralSplit().eval()
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match="split"):
        prune_channels(model, torch.randn(1, 3, 4, 4), 0.5, strict=True, inplace=True)
    assert model.a.out_channels == 8 and model.d.out_channels == 6
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


class AttributeSplit(nn.Module):
    """Splits channels by a size kept in an attribute, which pruning updates."""

    def __init__(self):
        super().__init__()
        self.half = 6
        self.conv = nn.Conv2d(3, 12, 1)
        self.out = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        value, gate = torch.split(self.conv(x), self.half, dim=1)
        return self.out(value * torch.sigmoid(gate))


def test_a_split_size_held_in_an_attribute_is_updated():
    model = AttributeSplit().eval()
    x = torch.randn(2, 3, 4, 4)
    result = prune_channels(model, x, 0.5)
    assert result.model.half == 3 and result.model.conv.out_channels == 6
    assert result.model(x).shape == (2, 2, 4, 4)


def test_pruned_model_survives_deepcopy_and_pickle():
    model = prune_channels(cnn(), X, 0.5).model
    expected = model(X)
    assert_same_outputs(copy.deepcopy(model)(X), expected, atol=0)
    assert_same_outputs(pickle.loads(pickle.dumps(model))(X), expected, atol=0)


def test_pruned_model_runs_under_torch_compile():
    model = prune_channels(cnn(), X, 0.5).model
    compiled = torch.compile(model, backend="aot_eager")
    with torch.no_grad():
        assert_same_outputs(compiled(X), model(X), atol=1e-5)


def test_pruned_model_exports_to_onnx_with_equal_outputs(tmp_path):
    import onnxruntime as ort

    model = prune_channels(cnn(), X, 0.5).model
    path = tmp_path / "pruned.onnx"
    export_legacy_onnx(model, (X,), path, input_names=["x"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {"x": X.numpy()})
    with torch.no_grad():
        assert_same_outputs(onnx_out, model(X), atol=1e-4)


def test_pruned_model_trains_with_a_fresh_optimizer():
    model = prune_channels(cnn(), X, 0.5).model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.conv1.weight.detach().clone()
    loss = nn.functional.cross_entropy(model(X), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    optimizer.step()
    assert not torch.equal(model.conv1.weight, before)


def test_hf_llama_pruned_heads_update_the_config_and_still_generate():
    from tests.zoo import ZOO

    model, inputs = ZOO["hf_llama_gqa"]()
    result = prune_channels(model, inputs, 0.5, layer_ratios={"model.embed_tokens": 0.0})
    pruned = result.model
    assert (pruned.config.num_attention_heads, pruned.config.num_key_value_heads) == (2, 1)
    assert pruned.model.layers[0].self_attn.k_proj.out_features == 8
    assert pruned.config.hidden_size == 32
    generated = pruned.generate(inputs["input_ids"][:1, :4], max_new_tokens=3, do_sample=False)
    assert generated.shape == (1, 7)


def test_groups_with_one_channel_are_skipped():
    model = nn.Sequential(nn.Linear(3, 1), nn.ReLU(), nn.Linear(1, 2))
    result = prune_channels(model, torch.randn(2, 3), 0.5)
    assert [g.skipped for g in result.report.groups] == ["a single channel"]
    assert np.all(np.array([g.channels_after for g in result.report.groups]) == 1)


def test_zero_ratio_returns_an_unchanged_copy():
    model = cnn()
    result = prune_channels(model, X, 0.0)
    assert result.model is not model and channels(result.model) == (32, 64, 128, 10)
    assert result.plan["tensors"] == {} and result.report.params_after == result.report.params_before
    assert_same_outputs(result.model(X), model(X), atol=0)


def test_a_compiled_model_is_refused_with_a_pointer_to_the_original():
    with pytest.raises(ConfigError, match=r"torch.compile; prune the original module \(model._orig_mod\)"):
        prune_channels(torch.compile(cnn(), backend="eager"), X, 0.5)
