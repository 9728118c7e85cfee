"""Feature distillation: scale-free distances equal their hand computations, ignore the features' scale, and the
penultimate features are found from the model (no layer name), with a projection only where widths differ."""

import copy
import math

import pytest
import torch
from torch import nn

from prunekit import ConfigError
from prunekit.torch import DigitsCNN, DigitsMLP, prune_channels
from prunekit.torch.recover import Distiller, distillation_loss
from prunekit.torch.recover.features import feature_distance, head_layer


def _pair(seed: int = 0, shape=(6, 5)):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator), torch.randn(*shape, generator=generator)


def _hand_cosine(student, teacher):
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        dot = sum(s * t for s, t in zip(s_row, t_row))
        total += 1 - dot / (math.sqrt(sum(s * s for s in s_row)) * math.sqrt(sum(t * t for t in t_row)))
    return total / len(student)


def _hand_standardized(student, teacher):
    def standardize(rows):
        columns = list(zip(*rows))
        out = []
        for column in columns:
            mean = sum(column) / len(column)
            std = math.sqrt(sum((v - mean) ** 2 for v in column) / len(column))
            out.append([(v - mean) / std for v in column])
        return list(zip(*out))

    s_rows, t_rows = standardize(student.tolist()), standardize(teacher.tolist())
    squares = [(s - t) ** 2 for s_row, t_row in zip(s_rows, t_rows) for s, t in zip(s_row, t_row)]
    return sum(squares) / len(squares)


def test_cosine_distance_equals_the_hand_computation():
    student, teacher = _pair()
    assert float(feature_distance(student, teacher, "cosine")) == pytest.approx(_hand_cosine(student, teacher), rel=1e-5)


def test_standardized_distance_equals_the_hand_computation():
    student, teacher = _pair(1)
    got = float(feature_distance(student, teacher, "standardized"))
    assert got == pytest.approx(_hand_standardized(student, teacher), rel=1e-5)


def test_cosine_of_conv_maps_flattens_each_sample():
    student, teacher = _pair(2, (3, 4, 2, 2))
    got = float(feature_distance(student, teacher, "cosine"))
    assert got == pytest.approx(_hand_cosine(student.flatten(1), teacher.flatten(1)), rel=1e-5)


@pytest.mark.parametrize("kind", ["cosine", "standardized"])
def test_scale_free_distances_ignore_a_scaling_of_the_teacher_features(kind):
    student, teacher = _pair(3, (8, 16))
    assert float(feature_distance(student, 10 * teacher, kind)) == pytest.approx(
        float(feature_distance(student, teacher, kind)), rel=1e-5
    )
    assert float(feature_distance(student, teacher, "mse")) != pytest.approx(
        float(feature_distance(student, 10 * teacher, "mse"))
    )


def _teacher_with_penultimate_scaled(teacher: DigitsCNN, factor: float) -> DigitsCNN:
    """The same logits, penultimate features (ReLU of fc1) multiplied by ``factor``: fc1 scaled up, fc2 down."""
    scaled = copy.deepcopy(teacher)
    with torch.no_grad():
        scaled.fc1.weight.mul_(factor)
        scaled.fc1.bias.mul_(factor)
        scaled.fc2.weight.div_(factor)
    return scaled


@pytest.mark.parametrize("kind", ["cosine", "standardized"])
def test_distiller_loss_is_unchanged_when_the_teachers_penultimate_features_are_scaled_by_10(kind):
    torch.manual_seed(0)
    teacher = DigitsCNN().eval()
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    student = prune_channels(copy.deepcopy(teacher), x[:2], ratio=0.5).model
    losses = []
    for model in (teacher, _teacher_with_penultimate_scaled(teacher, 10.0)):
        torch.manual_seed(1)  # the same projection initialisation for both
        distiller = Distiller(student, model, features="penultimate", feature_loss=kind, example_input=x[:2])
        losses.append(float(distiller(x, y).detach()))
        distiller.close()
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_penultimate_loss_equals_the_hand_computation_through_the_projection():
    torch.manual_seed(0)
    teacher = DigitsCNN().eval()
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    student = prune_channels(copy.deepcopy(teacher), x[:2], ratio=0.75).model
    distiller = Distiller(
        student, teacher, features="penultimate", feature_loss="cosine", feature_weight=0.3, example_input=x[:2]
    )
    got = float(distiller(x, y).detach())
    projection = distiller.projection("penultimate")
    with torch.no_grad():

        def penultimate(model):
            return torch.relu(
                model.fc1(torch.flatten(model.pool(torch.relu(model.bn2(model.conv2(torch.relu(model.bn1(model.conv1(x))))))), 1))
            )

        expected = distillation_loss(student(x), teacher(x), y) + 0.3 * _hand_cosine(
            projection.linear(penultimate(student)), penultimate(teacher)
        )
    assert got == pytest.approx(float(expected), rel=1e-5)


def test_penultimate_projection_appears_only_where_the_widths_differ():
    torch.manual_seed(0)
    teacher = DigitsCNN().eval()
    x = torch.randn(4, 1, 8, 8)
    student = prune_channels(copy.deepcopy(teacher), x[:2], ratio=0.75).model
    distiller = Distiller(student, teacher, features="penultimate", feature_loss="cosine", example_input=x)
    projection = distiller.projection("penultimate")
    assert projection is not None
    assert tuple(projection.linear.weight.shape) == (teacher.fc2.in_features, student.fc2.in_features)
    distiller.close()
    assert all(not m._forward_pre_hooks for m in student.modules())
    same = Distiller(copy.deepcopy(teacher), teacher, features="penultimate", example_input=x)
    assert same.projection("penultimate") is None and len(same.projections) == 0


def test_head_layer_is_found_by_running_the_model():
    x = torch.randn(2, 1, 8, 8)
    assert head_layer(DigitsCNN(), x, lambda out: out) == "fc2"
    assert head_layer(DigitsMLP(), x, lambda out: out) == "fc3"
    sequential = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10), nn.Identity())
    assert head_layer(sequential, x, lambda out: out) == "3"  # an Identity after it passes the same tensor on


class _FunctionalHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(64, 16)
        self.weight = nn.Parameter(torch.randn(10, 16))

    def forward(self, x):
        return nn.functional.linear(torch.relu(self.body(x.flatten(1))), self.weight)


def test_penultimate_without_a_logits_layer_is_a_named_error():
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ConfigError, match="_FunctionalHead.*name the feature layers"):
        Distiller(_FunctionalHead(), _FunctionalHead(), features="penultimate", example_input=x)


def test_unknown_feature_loss_is_a_config_error():
    with pytest.raises(ConfigError, match="feature_loss should be one of"):
        Distiller(DigitsMLP(), DigitsMLP(), feature_loss="l1")
    with pytest.raises(ConfigError, match="batches of 2"):
        feature_distance(torch.randn(1, 4), torch.randn(1, 4), "standardized")


def test_feature_distillation_at_weight_0_trains_exactly_as_logit_distillation():
    """The loader is iterated only for training (the first batch sizes the projections), so both see the same batches."""
    from prunekit.data import load_digits
    from prunekit.torch import make_loader
    from prunekit.torch.recover import distill

    split = load_digits(seed=0)
    torch.manual_seed(0)
    teacher = DigitsMLP().eval()
    students = []
    for features in (None, "penultimate"):
        torch.manual_seed(1)
        student = DigitsMLP(hidden=(32, 16))
        loader = make_loader(split.x_train[:256], split.y_train[:256], batch_size=64, seed=0)
        distill(student, teacher, loader, epochs=2, features=features, feature_weight=0.0, progress=False)
        students.append(student)
    for (name, a), b in zip(students[0].state_dict().items(), students[1].state_dict().values()):
        assert torch.equal(a, b), name
