"""Fused 3-D expert tensors (qwen2_moe's grouped mm of ``[E, out, in]``, gpt_oss's ``x @ W[e]`` of ``[E, in, out]``)
pruned per expert slice along the slice's input dim, as the projections are."""

from __future__ import annotations

import pytest
import torch
import transformers
from torch import nn

from prunekit.errors import ConfigError
from prunekit.torch.llm import memory
from prunekit.torch.llm.discovery import find_decoder_stack, set_weight_matrix, weight_matrix
from prunekit.torch.llm.experts import ExpertUses, expert_matrix, fused_candidates, set_expert_matrix
from prunekit.torch.llm.methods import LayerTask, magnitude, sparsegpt, wanda
from prunekit.torch.llm.sequential import prune
from prunekit.torch.llm.statistics import InputStatistics
from tests.torch.llm.tiny import VOCAB, tokens

FAMILIES = {
    "qwen2_moe": (
        "Qwen2MoeConfig",
        {"intermediate_size": 64, "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32, "num_experts": 4},
    ),
    "gpt_oss": ("GptOssConfig", {"intermediate_size": 32, "num_local_experts": 4, "head_dim": 8}),
}


def _moe(family: str, layers: int = 2, **overrides: int) -> nn.Module:
    torch.manual_seed(0)
    name, extra = FAMILIES[family]
    extra = {**extra, **overrides}
    config = getattr(transformers, name)(
        vocab_size=VOCAB,
        hidden_size=32,
        num_experts_per_tok=2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        **extra,
    )
    return transformers.AutoModelForCausalLM.from_config(config).float().eval()


def _experts(result) -> dict[str, float]:
    return {n: v for n, v in result.achieved.items() if n.endswith("]")}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_expert_slice_is_pruned_to_exact_row_sparsity_and_nothing_stays_dense(family):
    model = _moe(family)
    result = prune(model, tokens(4, 32), method="wanda", sparsity=0.5, n_samples=4, seq_len=32)
    experts = _experts(result)
    assert len(experts) == 2 * 2 * 4  # two blocks x (gate_up, down) x 4 experts
    for name, share in experts.items():
        param_name, _, expert = name[:-1].rpartition("[")
        param = model.get_parameter(param_name)[int(expert)]
        assert share == 0.5 and float((param == 0).float().mean()) == 0.5, name
    assert "dense_weights" not in result.extra and "dense_weight_share" not in result.extra
    assert torch.isfinite(model(tokens(1, 16)).logits).all()


@pytest.mark.parametrize(("family", "in_out"), [("qwen2_moe", False), ("gpt_oss", True)])
def test_two_four_groups_run_along_each_expert_s_input_dim(family, in_out):
    model = _moe(family)
    prune(model, tokens(4, 32), method="sparsegpt", pattern="2:4", n_samples=4, seq_len=32)
    stack = find_decoder_stack(model)
    for index, block in enumerate(stack.blocks):
        for name, param in fused_candidates(block, {f"{p}.weight" for p in stack.projections[index]}).items():
            if param.dim() != 3 or name.endswith("bias"):
                continue
            for expert in range(param.shape[0]):
                rows = expert_matrix(param, expert, in_out)  # [out, in]: groups of 4 consecutive inputs per row
                kept = (rows.reshape(rows.shape[0], -1, 4) != 0).sum(-1)
                assert bool((kept == 2).all()), f"{name}[{expert}]"


class _ToyExperts(nn.Module):
    """Three experts in one [3, out, in] tensor, each fed every token through ``linear(x, W[e])``."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3, 6, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(nn.functional.linear(x, self.weight[e]) for e in range(3))


def test_wanda_on_expert_inputs_of_equal_norms_is_per_row_magnitude():
    torch.manual_seed(1)
    toy = _ToyExperts()
    with ExpertUses(dict(toy.named_parameters()), "norms") as uses, torch.no_grad():
        toy(torch.eye(8) * 3.0)  # every input feature has norm 3 for every expert
    assert uses.pruneable() == {"weight": False}
    for expert in range(3):
        stats = uses.stats[("weight", expert)]
        assert torch.allclose(stats.input_norms(), torch.full((8,), 3.0))
        weight = expert_matrix(toy.weight, expert, False).detach()
        by_wanda = wanda(LayerTask(f"weight[{expert}]", weight, stats, 0.5))
        by_magnitude = magnitude(LayerTask(f"weight[{expert}]", weight, None, 0.5, comparison="row"))
        assert torch.equal(by_wanda != 0, by_magnitude != 0)


def test_a_fused_tensor_used_other_than_as_a_projection_stays_dense():
    toy = _ToyExperts()
    with ExpertUses(dict(toy.named_parameters()), "norms") as uses, torch.no_grad():
        toy.weight.sum()
    assert uses.pruneable() == {} and uses.dense == {"weight"}


def _reference_in_memory(model: nn.Module, ids: torch.Tensor, method) -> None:
    """Block by block, statistics from one full-model forward over all tokens (no capture, no batches)."""
    stack = find_decoder_stack(model)
    modules = dict(model.named_modules())
    for index, block in enumerate(stack.blocks):
        stats: dict[str, InputStatistics] = {}
        handles = []
        for name in stack.projection_names(index):
            stats[name] = InputStatistics(weight_matrix(modules[name]).shape[1], hessian=True)
            handles.append(modules[name].register_forward_pre_hook(lambda _m, a, s=stats[name]: s.add(a[0])))
        fused = fused_candidates(block, {f"{p}.weight" for p in stack.projections[index]})
        with ExpertUses(fused, "hessian") as uses, torch.no_grad():
            model(ids)
        for handle in handles:
            handle.remove()
        for name in stack.projection_names(index):
            task = LayerTask(name, weight_matrix(modules[name]).detach().float(), stats[name], 0.5)
            set_weight_matrix(modules[name], method(task))
        for name, in_out in uses.pruneable().items():
            param = fused[name]
            for expert in range(param.shape[0]) if param.dim() == 3 else [None]:
                weight = expert_matrix(param, expert, in_out).detach().float()
                task = LayerTask(name, weight, uses.stats[(name, expert)], 0.5)
                set_expert_matrix(param, expert, in_out, method(task))


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("method", [wanda, sparsegpt])
def test_layer_by_layer_equals_all_activations_in_memory_with_experts(family, method):
    ids = tokens(6, 32)
    sequential, reference = _moe(family, layers=3), _moe(family, layers=3)
    result = prune(sequential, ids, method=method, sparsity=0.5, n_samples=6, seq_len=32, batch_size=4)
    assert len(_experts(result)) == 3 * 2 * 4
    _reference_in_memory(reference, ids, method)
    for (name, a), (_, b) in zip(sequential.named_parameters(), reference.named_parameters(), strict=True):
        assert torch.equal(a == 0, b == 0), name
        assert torch.allclose(a, b, atol=1e-5), name


def test_per_expert_hessians_that_would_not_fit_are_refused_before_work(monkeypatch):
    model = _moe("qwen2_moe")
    before = {n: p.clone() for n, p in model.named_parameters()}
    stack = find_decoder_stack(model)
    assert memory.expert_statistics_bytes(stack, hessian=True) == 4 * 64 * 64 * 4 + 4 * 32 * 32 * 4
    without = sum(memory.estimate_bytes(model, stack, (4, 32), 4, hessian=True).values())
    monkeypatch.setattr(memory, "available_bytes", lambda _device: without + 1)
    monkeypatch.delenv("PRUNEKIT_SKIP_MEMORY_CHECK", raising=False)
    with pytest.raises(ConfigError, match=r"statistics .* GiB is free"):
        prune(model, tokens(4, 32), method="sparsegpt", sparsity=0.5, n_samples=4, seq_len=32, batch_size=4)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_an_expert_no_token_reached_is_pruned_by_magnitude_and_listed():
    model = _moe("gpt_oss")
    stack = find_decoder_stack(model)
    with torch.no_grad():
        for block in stack.blocks:
            block.mlp.router.bias[3] = -1e4  # the router never picks expert 3
    dense = model.get_parameter("model.layers.0.mlp.experts.down_proj")[3].detach().clone()
    result = prune(model, tokens(4, 32), method="wanda", sparsity=0.5, n_samples=4, seq_len=32)
    assert sorted(result.extra["unreached"]) == sorted(
        f"model.layers.{i}.mlp.experts.{p}[3]" for i in range(2) for p in ("gate_up_proj", "down_proj")
    )
    by_magnitude = magnitude(LayerTask("down_proj[3]", dense.t(), None, 0.5, comparison="row"))  # x @ W[e]: [in, out]
    assert torch.equal(model.get_parameter("model.layers.0.mlp.experts.down_proj")[3], by_magnitude.t())
    assert result.extra["fused_input_dims"]["model.layers.0.mlp.experts.down_proj"] == 0


def test_a_pattern_that_does_not_divide_a_fused_tensor_is_refused_before_work_naming_it():
    model = _moe("qwen2_moe", moe_intermediate_size=24)  # down_proj [4, 32, 24]: 16 divides the projections' 32 only
    before = {n: p.clone() for n, p in model.named_parameters()}
    with pytest.raises(ConfigError, match=r"sides \(32, 24\) of the fused expert tensor 'model.layers.0.mlp.experts.down_proj'"):
        prune(model, tokens(4, 32), method="magnitude", pattern="2:16", n_samples=4, seq_len=32)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_skipping_a_fused_tensor_by_name_leaves_it_dense_and_reported():
    model = _moe("qwen2_moe")
    before = model.get_parameter("model.layers.1.mlp.experts.down_proj").detach().clone()
    result = prune(
        model, tokens(4, 32), method="wanda", sparsity=0.5, n_samples=4, seq_len=32, skip=["*.1.mlp.experts.down_proj"]
    )
    assert torch.equal(model.get_parameter("model.layers.1.mlp.experts.down_proj"), before)
    assert result.extra["dense_weights"] == {"mlp.experts.down_proj": before.numel()}
    assert not any(n.startswith("model.layers.1.mlp.experts.down_proj") for n in result.achieved)


def test_ratio_globs_set_fused_tensors_targets_and_owl_gives_slices_their_block_s_sparsity():
    model = _moe("qwen2_moe")
    result = prune(model, tokens(4, 32), method="wanda", ratios={"*.experts.down_proj": 0.75}, n_samples=4, seq_len=32)
    experts = _experts(result)
    assert {v for n, v in experts.items() if ".down_proj[" in n} == {0.75}
    assert {v for n, v in experts.items() if ".gate_up_proj[" in n} == {0.5}
    model = _moe("qwen2_moe")
    result = prune(model, tokens(4, 32), method="wanda", sparsity=0.5, ratios="owl", n_samples=4, seq_len=32)
    for name, share in _experts(result).items():
        block = name.split(".mlp.")[0]
        assert result.targets[name] == result.targets[f"{block}.self_attn.q_proj"]
        assert abs(share - result.targets[name]) < 1 / 32, name


def test_a_batched_matmul_over_all_experts_gives_each_expert_its_own_batch_row():
    weight = nn.Parameter(torch.randn(3, 8, 6))  # [E, in, out], used as bmm(x[E, tokens, in], W)
    x = torch.randn(3, 5, 8)
    with ExpertUses({"w": weight}, "hessian") as uses, torch.no_grad():
        torch.bmm(x, weight)
    assert uses.pruneable() == {"w": True}
    for expert in range(3):
        assert torch.allclose(uses.stats[("w", expert)].xxt, x[expert].t() @ x[expert])


def test_a_killed_moe_run_resumes_to_the_same_experts_and_the_same_report(tmp_path):
    from prunekit.torch.llm.checkpoint import BlockCheckpoint
    from tests.torch.llm.test_checkpoint import _dying

    ids = tokens(4, 32)
    options = dict(method="wanda", sparsity=0.5, ratios="owl", owl_threshold=2.0, n_samples=4, seq_len=32, batch_size=4)
    whole = _moe("qwen2_moe", layers=3)
    expected = prune(whole, ids, **options)
    folder = tmp_path / "run.partial"
    with pytest.raises(KeyboardInterrupt):
        prune(_moe("qwen2_moe", layers=3), ids, **options, checkpoint=_dying(folder, die_after=2))
    fresh = _moe("qwen2_moe", layers=3)
    resumed = prune(fresh, ids, **options, checkpoint=BlockCheckpoint(folder, resume=True))
    for (name, a), (_, b) in zip(whole.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert resumed.targets == expected.targets and resumed.achieved == expected.achieved
    assert resumed.extra == expected.extra and "dense_weights" not in resumed.extra
