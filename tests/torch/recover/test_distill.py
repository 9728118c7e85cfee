"""Knowledge distillation: the loss is Hinton's formula, projections appear only where widths differ, the teacher is frozen."""

import copy
import math

import pytest
import torch
from torch import nn

from prunekit import ConfigError, LayerNotFoundError
from prunekit.data import load_digits
from prunekit.torch import NM, DigitsCNN, DigitsMLP, Pruner, evaluate, fit, make_loader, prune_channels
from prunekit.torch.recover import Distiller, distill, distillation_loss
from tests.assertions import assert_same_outputs, assert_sparsity


def _hand_loss(student, teacher, labels, temperature, alpha):
    total_kl = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):

        def softmax(row):
            exps = [math.exp(v / temperature) for v in row]
            return [e / sum(exps) for e in exps]

        p_s, p_t = softmax(s_row), softmax(t_row)
        total_kl += sum(t * math.log(t / s) for s, t in zip(p_s, p_t))
    kl = total_kl / len(labels)
    ce = 0.0
    for row, label in zip(student.tolist(), labels.tolist()):
        ce += -row[label] + math.log(sum(math.exp(v) for v in row))
    ce /= len(labels)
    return alpha * temperature**2 * kl + (1 - alpha) * ce


@pytest.mark.parametrize(("temperature", "alpha"), [(1.0, 0.5), (4.0, 0.7), (2.0, 1.0), (3.0, 0.0)])
def test_distillation_loss_equals_the_hand_computation(temperature, alpha):
    generator = torch.Generator().manual_seed(3)
    student, teacher = torch.randn(5, 4, generator=generator), torch.randn(5, 4, generator=generator)
    labels = torch.tensor([0, 3, 1, 2, 3])
    got = distillation_loss(student, teacher, labels, temperature=temperature, alpha=alpha)
    assert float(got) == pytest.approx(_hand_loss(student, teacher, labels, temperature, alpha), rel=1e-5)


def test_distillation_loss_of_identical_logits_is_the_task_term_only():
    logits = torch.randn(6, 10)
    labels = torch.arange(6)
    got = distillation_loss(logits, logits.clone(), labels, alpha=0.25)
    assert float(got) == pytest.approx(0.75 * float(nn.functional.cross_entropy(logits, labels)), abs=1e-6)


def test_distillation_loss_rejects_bad_arguments():
    logits = torch.randn(3, 10)
    with pytest.raises(ConfigError, match="differ in shape"):
        distillation_loss(logits, torch.randn(3, 5), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ConfigError, match="temperature"):
        distillation_loss(logits, logits, torch.zeros(3, dtype=torch.long), temperature=0)
    with pytest.raises(ConfigError, match="alpha"):
        distillation_loss(logits, logits, torch.zeros(3, dtype=torch.long), alpha=1.5)
    with pytest.raises(ConfigError, match="needs labels"):
        distillation_loss(logits, logits, None, alpha=0.5)


def test_distillation_loss_refuses_softmax_outputs_in_place_of_logits():
    logits = torch.randn(4, 10)
    labels = torch.arange(4)
    with pytest.raises(ConfigError, match="teacher's outputs look like probabilities"):
        distillation_loss(logits, logits.softmax(-1), labels)
    with pytest.raises(ConfigError, match="student's outputs look like probabilities"):
        distillation_loss(logits.softmax(-1), logits, labels)
    sequence = torch.randn(2, 3, 10)  # per-token logits pass, as do nonnegative logits that are not distributions
    assert float(distillation_loss(sequence, sequence.clone(), alpha=1.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_loss(logits.abs(), logits.abs() + 0.1, labels)) > 0


def test_projection_only_where_structured_pruning_changed_the_width():
    torch.manual_seed(0)
    teacher = DigitsCNN().eval()
    x = torch.randn(4, 1, 8, 8)
    student = prune_channels(copy.deepcopy(teacher), x, ratio=0.5, ignore_outputs=[]).model
    assert student.conv1.out_channels < teacher.conv1.out_channels
    distiller = Distiller(student, teacher, features=["conv1", "fc2"], example_input=x)
    projection = distiller.projection("conv1")
    assert projection is not None
    assert tuple(projection.linear.weight.shape) == (teacher.conv1.out_channels, student.conv1.out_channels)
    assert distiller.projection("fc2") is None  # 10 logits on both sides
    assert len(list(distiller.projections.parameters())) == 1
    names = {id(p) for p in distiller.parameters()}
    assert id(projection.linear.weight) in names and all(id(p) in names for p in student.parameters())
    plain = distiller.close()
    assert plain is student and not plain._forward_hooks and not distiller.projections
    assert all(not m._forward_hooks for m in plain.modules())


def test_no_projection_between_models_of_equal_widths():
    teacher, student = DigitsMLP(), DigitsMLP()
    distiller = Distiller(student, teacher, features={"fc1": "fc1", "fc2": "fc2"}, example_input=torch.randn(2, 1, 8, 8))
    assert len(distiller.projections) == 0


def test_feature_loss_is_the_mse_of_the_named_outputs():
    torch.manual_seed(0)
    teacher, student = DigitsMLP(), DigitsMLP()
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    distiller = Distiller(student, teacher, alpha=1.0, features=["fc1"], feature_weight=2.0, example_input=x[:2])
    got = distiller(x, y)
    flat = x.flatten(1)
    mse = nn.functional.mse_loss(student.fc1(flat), teacher.fc1(flat))
    logits = distillation_loss(student(x), teacher(x), alpha=1.0)
    assert float(got.detach()) == pytest.approx(float((logits + 2.0 * mse).detach()), rel=1e-5)


def test_teacher_gets_no_gradient_and_stays_in_its_mode():
    teacher, student = DigitsCNN(), DigitsCNN()
    teacher.train()
    running = teacher.bn1.running_mean.clone()
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    Distiller(student, teacher)(x, y).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    assert teacher.training  # restored after its eval-mode forward
    assert torch.equal(teacher.bn1.running_mean, running)  # ran in eval mode: BN statistics untouched


def test_bad_feature_names_and_shapes_are_named():
    teacher, student = DigitsCNN(), DigitsCNN()
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(LayerNotFoundError, match="conv9.*student"):
        Distiller(student, teacher, features=["conv9"], example_input=x)
    with pytest.raises(ConfigError, match="example_input"):
        Distiller(student, teacher, features=["conv1"])
    with pytest.raises(ConfigError, match="rank 4 and 2"):
        Distiller(student, teacher, features={"conv1": "fc1"}, example_input=x)
    with pytest.raises(ConfigError, match="one channel/width dimension"):
        Distiller(student, teacher, features={"conv2": "pool"}, example_input=x)
    with pytest.raises(ConfigError, match="differ in shape"):
        Distiller(DigitsCNN(num_classes=5), teacher, features=["conv1"], example_input=x)
    with pytest.raises(ConfigError, match="same object"):
        Distiller(student, student)
    assert not any(m._forward_hooks for m in student.modules())  # a failed constructor leaves no hooks


def test_distill_with_a_pruner_keeps_exact_sparsity_and_learns_from_the_teacher():
    torch.manual_seed(0)

    split = load_digits(seed=0)
    loader = make_loader(split.x_train, split.y_train, batch_size=64, seed=0)
    test = make_loader(split.x_test, split.y_test, shuffle=False)
    teacher = DigitsMLP()
    fit(teacher, loader, epochs=8, lr=3e-3, progress=False)
    student = copy.deepcopy(teacher)
    pruner = Pruner(student, 0.8)
    pruner.prune()
    pruned_accuracy = evaluate(student, test)
    history = distill(student, teacher, loader, epochs=2, lr=1e-3, pruner=pruner, features=["fc2"], progress=False)
    pruner.strip()
    assert len(history) == 2 and history[1]["loss"] < history[0]["loss"]
    for name in ("fc1.weight", "fc2.weight", "fc3.weight"):
        assert_sparsity(student.get_parameter(name), 0.8, name)
    assert evaluate(student, test) > pruned_accuracy + 0.02, (evaluate(teacher, test), pruned_accuracy)
    assert set(student.state_dict()) == set(teacher.state_dict())
    assert not any(m._forward_hooks for m in student.modules())
    x = torch.as_tensor(split.x_test[:4])
    assert_same_outputs(student(x), copy.deepcopy(student)(x))  # a plain, copyable model again


@pytest.mark.slow  # importing transformers alone takes ~10 s on the shared machines
def test_logit_distillation_of_a_2_4_pruned_language_model_over_token_batches():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32,
    )  # fmt: skip
    torch.manual_seed(0)
    teacher = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        teacher.lm_head.weight.mul_(40.0)  # peaked next-token distributions, as a trained LM has
    student = copy.deepcopy(teacher)
    pruner = Pruner(student, 0.5, pattern=NM(2, 4), targets=[nn.Linear], exclude=["lm_head"])
    pruner.prune()
    generator = torch.Generator().manual_seed(1)
    batches = [{"input_ids": torch.randint(0, 64, (4, 16), generator=generator)} for _ in range(8)]

    def kl_to_teacher() -> float:
        with torch.no_grad():
            return sum(
                float(distillation_loss(student(**b).logits, teacher(**b).logits, temperature=2.0, alpha=1.0)) for b in batches
            )

    before = kl_to_teacher()
    history = distill(student, teacher, batches, epochs=4, lr=2e-3, temperature=2.0, alpha=1.0, pruner=pruner, progress=False)
    assert kl_to_teacher() < 0.5 * before, (before, history)
    weight = student.model.layers[0].mlp.up_proj.weight
    assert ((weight.reshape(weight.shape[0], -1, 4) != 0).sum(-1) == 2).all()  # the 2:4 pattern held
