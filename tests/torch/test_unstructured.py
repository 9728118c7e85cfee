"""The PyTorch pruner: exact per-layer sparsity, scopes, targets, patterns and importances."""

import numpy as np
import pytest
import torch
from torch import nn

from prunekit import ConfigError, LayerNotFoundError
from prunekit.torch import NM, Blocks, DigitsCNN, Pruner, prune_unstructured
from tests.assertions import assert_same_outputs, assert_sparsity, assert_zero_count

PRUNABLE = ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"]


class TwoLinear(nn.Module):
    """Weights chosen by hand: 'small' holds 0.001..0.1, 'large' holds 1..100."""

    def __init__(self):
        super().__init__()
        self.small = nn.Linear(10, 10, bias=False)
        self.large = nn.Linear(10, 10, bias=False)
        with torch.no_grad():
            self.small.weight.copy_(torch.arange(1.0, 101.0).reshape(10, 10) * 1e-3)
            self.large.weight.copy_(torch.arange(1.0, 101.0).reshape(10, 10))

    def forward(self, x):
        return self.large(self.small(x))


def test_layer_scope_gives_every_weight_exactly_the_sparsity():
    model = DigitsCNN()
    Pruner(model, 0.7).prune()
    for name in PRUNABLE:
        assert_sparsity(model.get_parameter(name), 0.7, name)
    assert_zero_count(model.fc1.bias, 0, "fc1.bias")


def test_global_scope_prunes_the_smallest_weights_across_layers():
    model = TwoLinear()
    Pruner(model, 0.6, scope="global").prune()
    assert_zero_count(model.small.weight, 100, "small")
    assert_zero_count(model.large.weight, 20, "large")
    assert (model.large.weight.flatten()[:20] == 0).all()


def test_global_scope_normalized_by_max_prunes_layers_evenly():
    model = TwoLinear()
    Pruner(model, 0.6, scope="global", normalize="max").prune()
    assert_zero_count(model.small.weight, 60, "small")
    assert_zero_count(model.large.weight, 60, "large")


def test_layer_scope_on_crafted_model_prunes_each_layer_alone():
    model = TwoLinear()
    Pruner(model, 0.6, scope="layer").prune()
    assert_zero_count(model.small.weight, 60, "small")
    assert_zero_count(model.large.weight, 60, "large")


def test_overrides_by_glob_set_their_own_sparsity():
    model = DigitsCNN()
    Pruner(model, 0.8, overrides={"conv*": 0.3, "fc2": 0.0}).prune()
    assert_sparsity(model.conv1.weight, 0.3, "conv1")
    assert_sparsity(model.conv2.weight, 0.3, "conv2")
    assert_sparsity(model.fc1.weight, 0.8, "fc1")
    assert_zero_count(model.fc2.weight, 0, "fc2")


def test_overrides_in_global_scope_are_pruned_layerwise_and_the_rest_globally():
    model = TwoLinear()
    Pruner(model, 0.5, scope="global", overrides={"small": 0.1}).prune()
    assert_zero_count(model.small.weight, 10, "small")
    assert_zero_count(model.large.weight, 50, "large")


def test_exclude_leaves_a_layer_dense():
    model = DigitsCNN()
    pruner = Pruner(model, 0.9, exclude=["fc2"])
    pruner.prune()
    assert "fc2.weight" not in pruner.params
    assert_zero_count(model.fc2.weight, 0, "fc2")
    assert_sparsity(model.fc1.weight, 0.9, "fc1")


def test_ignore_still_excludes_with_a_deprecation_warning():
    model = DigitsCNN()
    with pytest.warns(DeprecationWarning, match="Pruner: ignore= is now exclude="):
        pruner = Pruner(model, 0.9, exclude=["fc1"], ignore=["fc2"])
    assert "fc1.weight" not in pruner.params and "fc2.weight" not in pruner.params


def test_targets_by_parameter_glob_can_include_biases():
    model = DigitsCNN()
    pruner = Pruner(model, 0.5, targets=["fc*.bias"])
    pruner.prune()
    assert list(pruner.params) == ["fc1.bias", "fc2.bias"]
    assert_sparsity(model.fc1.bias, 0.5, "fc1.bias")
    assert_zero_count(model.fc1.weight, 0, "fc1.weight")


def test_targets_by_module_type_and_predicate():
    assert list(Pruner(DigitsCNN(), 0.5, targets=[nn.Conv2d]).params) == ["conv1.weight", "conv2.weight"]
    predicate = Pruner(DigitsCNN(), 0.5, targets=lambda name, p: p.dim() == 2).params
    assert list(predicate) == ["fc1.weight", "fc2.weight"]


def test_default_targets_include_embeddings():
    model = nn.Sequential(nn.Embedding(20, 8), nn.Linear(8, 4))
    pruner = Pruner(model, 0.5)
    pruner.prune()
    assert list(pruner.params) == ["0.weight", "1.weight"]
    assert_sparsity(model[0].weight, 0.5, "embedding")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"targets": ["decoder.*"]}, "target 'decoder.\\*' matches no parameter or module"),
        ({"exclude": ["head"]}, "exclude pattern 'head' matches no parameter or module"),
        ({"overrides": {"conv9": 0.5}}, "override 'conv9' matches none of the pruned parameters"),
    ],
)
def test_names_that_match_nothing_raise_layer_not_found(kwargs, match):
    with pytest.raises(LayerNotFoundError, match=match):
        Pruner(DigitsCNN(), 0.5, **kwargs)


def test_non_floating_parameter_is_refused_by_name():
    model = DigitsCNN()
    model.steps = nn.Parameter(torch.zeros(3, dtype=torch.long), requires_grad=False)
    with pytest.raises(ConfigError, match="'steps' has dtype torch.int64"):
        Pruner(model, 0.5, targets=["steps"])


@pytest.mark.parametrize("sparsity", [1.0, -0.2])
def test_sparsity_outside_unit_interval_is_refused(sparsity):
    with pytest.raises(ConfigError, match="in \\[0, 1\\)"):
        Pruner(DigitsCNN(), sparsity)


def test_unknown_scope_and_pattern_are_refused():
    with pytest.raises(ConfigError, match="scope should be one of"):
        Pruner(DigitsCNN(), 0.5, scope="model")
    with pytest.raises(ConfigError, match="pattern should be"):
        Pruner(DigitsCNN(), 0.5, pattern="2:4")


def test_importance_callable_decides_which_weights_go():
    model = TwoLinear()
    # score = minus the flat index: the last weights are the least important
    scores = lambda name, p: -torch.arange(p.numel(), dtype=torch.float32).reshape(p.shape)  # noqa: E731
    Pruner(model, 0.3, importance=scores).prune()
    flat = model.large.weight.flatten()
    assert (flat[70:] == 0).all() and (flat[:70] != 0).all()


def test_importance_callable_with_wrong_shape_names_the_layer():
    bad = lambda name, p: torch.ones(3)  # noqa: E731
    with pytest.raises(ConfigError, match="shape \\(3,\\) for 'small.weight'"):
        Pruner(TwoLinear(), 0.3, importance=bad).prune()


def test_taylor_importance_needs_gradients():
    with pytest.raises(ConfigError, match="importance='taylor' needs gradients"):
        Pruner(TwoLinear(), 0.3, importance="taylor").prune()


def test_taylor_importance_uses_weight_times_gradient():
    model = TwoLinear()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    model.large.weight.grad[0, :5] = 1e-9  # large weights with tiny gradients go first
    Pruner(model, 0.05, importance="taylor", targets=["large"]).prune()
    assert (model.large.weight[0, :5] == 0).all()
    assert_zero_count(model.large.weight, 5, "large")


def test_random_importance_is_reproducible_with_the_same_seed():
    a, b, c = TwoLinear(), TwoLinear(), TwoLinear()
    Pruner(a, 0.5, importance="random", seed=3).prune()
    Pruner(b, 0.5, importance="random", seed=3).prune()
    Pruner(c, 0.5, importance="random", seed=4).prune()
    assert torch.equal(a.large.weight == 0, b.large.weight == 0)
    assert not torch.equal(a.large.weight == 0, c.large.weight == 0)


def test_nm_pattern_keeps_two_of_every_four_inputs():
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    Pruner(model, 0.5, pattern=NM(2, 4)).prune()
    groups = (model[0].weight != 0).reshape(8, 4, 4).sum(dim=2)
    assert (groups == 2).all()
    assert_sparsity(model[2].weight, 0.5, "second layer")


def test_nm_pattern_on_a_layer_it_cannot_group_names_it():
    model = nn.Sequential(nn.Linear(6, 8))
    with pytest.raises(ConfigError, match="'0.weight' has shape \\(8, 6\\)"):
        Pruner(model, 0.5, pattern=NM(2, 4))


def test_nm_pattern_refuses_global_scope():
    with pytest.raises(ConfigError, match="use scope='layer' with NM"):
        Pruner(DigitsCNN(), 0.5, pattern=NM(2, 4), scope="global")


def test_block_pattern_prunes_whole_blocks():
    model = nn.Sequential(nn.Linear(16, 8, bias=False))
    Pruner(model, 0.5, pattern=Blocks((2, 4))).prune()
    blocks = (model[0].weight != 0).reshape(4, 2, 4, 4).permute(0, 2, 1, 3).reshape(16, 8)
    kept = blocks.sum(dim=1)
    assert set(kept.tolist()) <= {0, 8}
    assert int((kept == 0).sum()) == 8


def test_block_pattern_with_global_scope_ranks_blocks_across_layers():
    model = TwoLinear()
    Pruner(model, 0.5, pattern=Blocks((1, 10)), scope="global").prune()
    assert_zero_count(model.small.weight, 100, "small")
    assert_zero_count(model.large.weight, 0, "large")


def test_pruning_keeps_model_class_keys_and_adds_no_hooks():
    model = DigitsCNN()
    keys = list(model.state_dict())
    pruner = Pruner(model, 0.5)
    pruner.prune()
    assert type(model) is DigitsCNN
    assert list(model.state_dict()) == keys
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


def test_strip_returns_the_plain_model_with_exact_zeros():
    model = DigitsCNN()
    keys = list(model.state_dict())
    pruner = Pruner(model, 0.6)
    pruner.prune()
    stripped = pruner.strip()
    assert stripped is model and type(stripped) is DigitsCNN
    assert list(stripped.state_dict()) == keys
    for name in PRUNABLE:
        assert_sparsity(stripped.get_parameter(name), 0.6, name)
    with pytest.raises(ConfigError, match="was stripped"):
        pruner.step()


def test_prune_unstructured_is_one_call_and_keeps_outputs_of_untouched_layers():
    model = DigitsCNN().eval()
    reference = DigitsCNN().eval()
    reference.load_state_dict(model.state_dict())
    prune_unstructured(model, 0.0)
    x = torch.randn(4, 1, 8, 8)
    assert_same_outputs(model(x), reference(x), atol=0)
    prune_unstructured(model, 0.9, scope="global")
    total = sum(model.get_parameter(n).numel() for n in PRUNABLE)
    zeros = sum(int((model.get_parameter(n) == 0).sum()) for n in PRUNABLE)
    assert zeros == round(0.9 * total)


def test_a_tied_weight_is_selected_once_under_its_parameter_name():
    from prunekit.torch.unstructured.selection import select_parameters

    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False))
    model[1].weight = model[0].weight  # tied, as an LM head and its embedding
    chosen = select_parameters(model)
    assert list(chosen) == ["0.weight"] and chosen["0.weight"] is model[0].weight
    Pruner(model, 0.5).prune()
    assert_zero_count(model[0].weight, 20, "tied weight")


def test_from_zeros_holds_a_stripped_models_zeros_through_training():
    from prunekit.torch.training import fit, make_loader

    model = DigitsCNN(channels=(4, 8), hidden=16)
    prune_unstructured(model, 0.8, scope="global")
    zeros = {name: (p == 0).clone() for name, p in model.named_parameters() if p.dim() > 1}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    pruner = Pruner.from_zeros(model, optimizer=optimizer)
    x = np.random.default_rng(0).standard_normal((64, 1, 8, 8)).astype(np.float32)
    fit(model, make_loader(x, np.arange(64) % 10, batch_size=16), epochs=2, optimizer=optimizer, pruner=pruner, progress=False)
    pruner.strip()
    for name, p in model.named_parameters():
        if name in zeros:
            assert torch.equal(p == 0, zeros[name]), name  # exactly the same zeros, none revived, none added
    assert Pruner.from_zeros(DigitsCNN()) is None  # a dense model has nothing to hold
