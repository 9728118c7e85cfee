"""prunekit.llm on models whose layers are split over parallel ModuleLists indexed together by their forward
(XLM's ``attentions[i]``, ``layer_norm1[i]``, ``ffns[i]``, ``layer_norm2[i]``): each unit is a stage, reached
through the model's own forward with the units before it already pruned."""

from __future__ import annotations

import pytest
import torch
import transformers
from torch import nn

from prunekit.errors import ConfigError
from prunekit.torch.llm.checkpoint import BlockCheckpoint
from prunekit.torch.llm.depth import prune_depth
from prunekit.torch.llm.discovery import find_decoder_stack
from prunekit.torch.llm.methods import sparsegpt
from prunekit.torch.llm.sequential import prune
from prunekit.torch.llm.width import prune_width
from tests.torch.llm.test_checkpoint import _dying
from tests.torch.llm.test_prune import _reference_all_in_memory
from tests.torch.llm.tiny import VOCAB, tokens

WIDTH = 16


class _Mixer(nn.Module):
    """Causal running mean of projected tokens, projected back: attention's shape of work without heads."""

    def __init__(self) -> None:
        super().__init__()
        self.value = nn.Linear(WIDTH, WIDTH)
        self.out = nn.Linear(WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = torch.arange(1, x.shape[1] + 1, dtype=x.dtype).view(1, -1, 1)
        return self.out(self.value(x).cumsum(dim=1) / steps)


class _FeedForward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(WIDTH, 2 * WIDTH)
        self.down = nn.Linear(2 * WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))


class _ParallelListsLM(nn.Module):
    """Layers split over four parallel lists; residuals and norms run in this forward, between the units.
    ``unused`` is a fifth list of projections the forward never calls."""

    def __init__(self, layers: int = 2, unused: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.mixers = nn.ModuleList([_Mixer() for _ in range(layers)])
        self.norms1 = nn.ModuleList([nn.LayerNorm(WIDTH) for _ in range(layers)])
        self.ffns = nn.ModuleList([_FeedForward() for _ in range(layers)])
        self.norms2 = nn.ModuleList([nn.LayerNorm(WIDTH) for _ in range(layers)])
        if unused:
            self.cross = nn.ModuleList([nn.Sequential(nn.Linear(WIDTH, WIDTH)) for _ in range(layers)])
        self.head = nn.Linear(WIDTH, VOCAB)

    def get_input_embeddings(self) -> nn.Module:
        return self.embed

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids)
        for i in range(len(self.mixers)):
            x = self.norms1[i](x + self.mixers[i](x))
            x = self.norms2[i](x + self.ffns[i](x))
        return self.head(x)


def _wanda_reference(model: nn.Module, ids: torch.Tensor, units: list[str], sparsity: float) -> None:
    """Wanda unit by unit in execution order, each unit's input norms from a full forward of the model as pruned so far."""
    for unit in units:
        linears = {n: m for n, m in model.get_submodule(unit).named_modules() if isinstance(m, nn.Linear)}
        squares = {n: torch.zeros(m.in_features, dtype=torch.float64) for n, m in linears.items()}

        def record(total: torch.Tensor):  # noqa: ANN202
            def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
                total.add_(args[0].double().pow(2).sum(dim=(0, 1)))

            return hook

        handles = [m.register_forward_pre_hook(record(squares[n])) for n, m in linears.items()]
        with torch.no_grad():
            model(ids)
        for handle in handles:
            handle.remove()
        with torch.no_grad():
            for n, m in linears.items():
                score = m.weight.double().abs() * squares[n].sqrt()
                drop = score.argsort(dim=1)[:, : int(m.in_features * sparsity)]
                m.weight.scatter_(1, drop, 0.0)


def test_discovery_makes_each_unit_of_parallel_lists_a_block_layer_by_layer():
    stack = find_decoder_stack(_ParallelListsLM())
    assert stack.parallel and stack.path == ""
    assert stack.names == ("mixers.0", "ffns.0", "mixers.1", "ffns.1")  # norms hold no projection: no stage of their own
    assert stack.lists == ("mixers", "norms1", "ffns", "norms2")
    assert stack.projection_names(1) == ["ffns.0.up", "ffns.0.down"]


def test_wanda_on_parallel_lists_equals_the_unit_by_unit_full_forward_reference():
    ids = tokens(6, 24)
    sequential, reference = _ParallelListsLM(), _ParallelListsLM()
    result = prune(sequential, ids, method="wanda", sparsity=0.5, n_samples=6, seq_len=24, batch_size=4)
    _wanda_reference(reference, ids, ["mixers.0", "ffns.0", "mixers.1", "ffns.1"], 0.5)
    assert sorted(result.achieved) == sorted(
        f"{unit}.{lin}"
        for i in range(2)
        for unit, lins in ((f"mixers.{i}", ("value", "out")), (f"ffns.{i}", ("up", "down")))
        for lin in lins
    )
    for name, module in sequential.named_modules():
        if isinstance(module, nn.Linear) and name != "head":
            per_row = (module.weight == 0).sum(dim=1)
            assert per_row.tolist() == [module.in_features // 2] * module.out_features, name
            assert torch.equal(module.weight, reference.get_submodule(name).weight), name
    assert torch.equal(sequential.head.weight, reference.head.weight)  # the LM head is no stage
    with torch.no_grad():
        assert torch.allclose(sequential(ids), reference(ids), atol=1e-6)


def test_sparsegpt_on_parallel_lists_equals_full_model_forwards_over_all_activations():
    ids = tokens(6, 24)
    sequential, reference = _ParallelListsLM(), _ParallelListsLM()
    prune(sequential, ids, method=sparsegpt, sparsity=0.5, n_samples=6, seq_len=24, batch_size=4)
    _reference_all_in_memory(reference, ids, sparsegpt, 0.5)
    for (name, a), (_, b) in zip(sequential.named_parameters(), reference.named_parameters(), strict=True):
        assert torch.equal(a == 0, b == 0), name
        assert torch.allclose(a, b, atol=1e-5), name


def test_a_list_the_forward_never_calls_is_reported_unreached_and_pruned_by_magnitude():
    model = _ParallelListsLM(unused=True)
    weight = model.cross[1][0].weight.detach().clone()
    result = prune(model, tokens(4, 24), method="wanda", sparsity=0.5, n_samples=4, seq_len=24)
    assert result.extra["unreached"] == ["cross.0.0", "cross.1.0"]
    kept = weight.abs() > weight.abs().median(dim=1, keepdim=True).values
    assert torch.equal(model.cross[1][0].weight != 0, kept)


@pytest.mark.parametrize("job", ["depth", "width"])
def test_depth_and_width_pruning_refuse_parallel_lists_naming_them_and_leave_the_model(job):
    model = _ParallelListsLM()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match=r"parallel lists 'mixers', 'norms1', 'ffns', 'norms2'"):
        if job == "depth":
            prune_depth(model, tokens(4, 24), remove=1, n_samples=4, seq_len=24)
        else:
            prune_width(model, tokens(4, 24), mlp=0.5, n_samples=4, seq_len=24)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_moving_one_block_to_a_device_is_refused_for_parallel_lists():
    with pytest.raises(ConfigError, match=r"only its own forward can run: move the model to the device"):
        prune(_ParallelListsLM(), tokens(4, 24), method="wanda", n_samples=4, seq_len=24, device="cpu")


def test_xlm_prunes_with_wanda_to_half_of_every_row():
    torch.manual_seed(0)
    config = transformers.XLMConfig(vocab_size=VOCAB, emb_dim=32, n_layers=2, n_heads=4, max_position_embeddings=64)
    model = transformers.AutoModelForCausalLM.from_config(config).float().eval()
    result = prune(model, tokens(4, 32), method="wanda", sparsity=0.5, n_samples=4, seq_len=32)
    assert len(result.achieved) == 12  # q/k/v/out and lin1/lin2 of both layers
    for name in result.achieved:
        weight = model.get_submodule(name).weight
        assert (weight == 0).sum(dim=1).tolist() == [weight.shape[1] // 2] * weight.shape[0], name


def test_a_killed_run_on_parallel_lists_resumes_bitwise_identical(tmp_path):
    ids = tokens(6, 24)
    options = dict(method="wanda", sparsity=0.5, n_samples=6, seq_len=24, batch_size=4)
    whole = _ParallelListsLM()
    expected = prune(whole, ids, **options)
    folder = tmp_path / "run.partial"
    with pytest.raises(KeyboardInterrupt):
        prune(_ParallelListsLM(), ids, **options, checkpoint=_dying(folder, die_after=2))
    fresh = _ParallelListsLM()  # a new process: the dense model again, its first two units restored
    resumed = prune(fresh, ids, **options, checkpoint=BlockCheckpoint(folder, resume=True))
    for (name, a), (_, b) in zip(whole.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert resumed.achieved == expected.achieved
