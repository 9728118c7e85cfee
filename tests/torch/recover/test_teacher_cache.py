"""Cached teacher logits: the sparse KL equals the full one where it should and a hand computation, and an LLM
student distils from the cache alone."""

import copy
import math

import pytest
import torch
from torch import nn

from prunekit import ConfigError
from prunekit.torch import NM, Pruner
from prunekit.torch.recover import TeacherLogitCache, cached_distillation_loss, distill_from_cache, distillation_loss


def test_full_cached_logits_give_the_live_distillation_loss():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 5, 7, generator=generator), torch.randn(2, 5, 7, generator=generator)
    expected = distillation_loss(student, teacher, alpha=1.0, temperature=3.0)
    log_probs = torch.log_softmax(teacher / 3.0, dim=-1)
    assert float(cached_distillation_loss(student, log_probs, None, temperature=3.0)) == pytest.approx(float(expected), rel=1e-6)
    values, indices = log_probs.topk(7, dim=-1)  # k = vocabulary: the same distribution, reordered
    assert float(cached_distillation_loss(student, values, indices, temperature=3.0)) == pytest.approx(float(expected), rel=1e-4)
    cache = TeacherLogitCache(nn.Identity(), [teacher], top_k=None, temperature=3.0)
    assert torch.allclose(cache.values[0], log_probs)


def test_top_k_cached_loss_matches_a_hand_computation():
    student = torch.tensor([[0.5, 0.0, -0.5, 1.0]])
    teacher = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    t = 2.0
    values, indices = torch.log_softmax(teacher / t, dim=-1).topk(2, dim=-1)  # classes 0 and 1
    teacher_norm = sum(math.exp(v / t) for v in (2.0, 1.0, 0.0, -1.0))
    p = [math.exp(2.0 / t) / teacher_norm, math.exp(1.0 / t) / teacher_norm]
    student_norm = sum(math.exp(v / t) for v in (0.5, 0.0, -0.5, 1.0))
    q = [math.exp(0.5 / t) / student_norm, math.exp(0.0 / t) / student_norm]
    kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)) + (1 - sum(p)) * math.log((1 - sum(p)) / (1 - sum(q)))
    assert float(cached_distillation_loss(student, values, indices, temperature=t)) == pytest.approx(t * t * kl, rel=1e-5)


def test_cached_loss_rejects_other_batches_and_bad_options():
    with pytest.raises(ConfigError, match="positions"):
        cached_distillation_loss(torch.randn(3, 5), torch.randn(4, 5), None)
    with pytest.raises(ConfigError, match="top_k"):
        TeacherLogitCache(nn.Linear(2, 2), [torch.randn(1, 2)], top_k=0)
    with pytest.raises(ConfigError, match="empty"):
        TeacherLogitCache(nn.Linear(2, 2), [])


@pytest.mark.slow  # importing transformers alone takes ~10 s on the shared machines
def test_a_2_4_pruned_llm_distils_from_top_k_cached_logits_without_its_teacher():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32,
    )  # fmt: skip
    torch.manual_seed(0)
    teacher = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        teacher.lm_head.weight.mul_(40.0)  # peaked next-token distributions, as a trained LM has
    reference = copy.deepcopy(teacher)  # kept only to measure the KL
    student = copy.deepcopy(teacher)
    pruner = Pruner(student, 0.5, pattern=NM(2, 4), targets=[nn.Linear], exclude=["lm_head"])
    pruner.prune()
    generator = torch.Generator().manual_seed(1)
    batches = [{"input_ids": torch.randint(0, 64, (4, 16), generator=generator)} for _ in range(8)]
    cache = TeacherLogitCache(teacher, batches, top_k=8, temperature=2.0)
    del teacher
    assert len(cache) == 8 and cache.nbytes == 8 * 4 * 16 * 8 * (4 + 8)  # float32 log-probs + int64 indices, 8 of 64

    def kl_to_teacher() -> float:
        with torch.no_grad():
            return sum(
                float(distillation_loss(student(**b).logits, reference(**b).logits, temperature=2.0, alpha=1.0)) for b in batches
            )

    before = kl_to_teacher()
    distill_from_cache(student, cache, epochs=4, lr=2e-3, pruner=pruner, progress=False)
    assert kl_to_teacher() < 0.7 * before  # the full KL, though only 8 of 64 log-probabilities per token were kept
    weight = student.model.layers[1].self_attn.q_proj.weight
    assert ((weight.reshape(weight.shape[0], -1, 4) != 0).sum(-1) == 2).all()
