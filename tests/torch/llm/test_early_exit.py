"""The statistics pass stops a block after its last projection call: same masks, less work, and full runs
where the calls depend on the data."""

from __future__ import annotations

import pytest
import torch
import transformers
from torch import nn

from prunekit.torch.llm import sequential
from prunekit.torch.llm.capture import BlockBatch, capture_block_inputs
from prunekit.torch.llm.collector import CallOrder, StatsCollector, run_block
from prunekit.torch.llm.discovery import find_decoder_stack
from prunekit.torch.llm.replay import CapturedReplay
from prunekit.torch.llm.sequential import prune
from tests.torch.llm.tiny import VOCAB, tiny_model, tokens


def _full_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the pruning engine's statistics passes run every block in full (today's path before the exit)."""

    def collector(modules, hessian, stop_early=True):  # noqa: ANN001, ANN202, ARG001
        return StatsCollector(modules, hessian, stop_early=False)

    monkeypatch.setattr(sequential, "StatsCollector", collector)


def _gptj(layers: int = 2) -> nn.Module:
    """GPT-J: attention and MLP side by side on the same normed input (a parallel block)."""
    torch.manual_seed(0)
    config = transformers.GPTJConfig(vocab_size=VOCAB, n_embd=32, n_layer=layers, n_head=4, rotary_dim=4, n_positions=64)
    return transformers.AutoModelForCausalLM.from_config(config).float().eval()


def _model(family: str) -> nn.Module:
    return _gptj() if family == "gptj" else tiny_model(family)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gptj"])
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_early_exit_prunes_exactly_as_full_statistics_passes(family, method, monkeypatch):
    ids = tokens(6, 32)
    early, full = _model(family), _model(family)
    prune(early, ids, method=method, sparsity=0.5, n_samples=6, seq_len=32, batch_size=2)
    _full_runs(monkeypatch)
    prune(full, ids, method=method, sparsity=0.5, n_samples=6, seq_len=32, batch_size=2)
    for (name, a), (_, b) in zip(early.named_parameters(), full.named_parameters(), strict=True):
        assert torch.equal(a == 0, b == 0), name
        assert torch.equal(a, b), name


def _completed_forwards(model: nn.Module, suffix: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name, module in model.named_modules():
        if name.endswith(suffix):
            counts[name] = 0
            module.register_forward_hook(lambda m, i, o, name=name: counts.__setitem__(name, counts[name] + 1))
    return counts


@pytest.mark.parametrize(
    ("family", "suffix", "skip"),
    [("llama", "mlp.down_proj", []), ("gptj", "mlp.fc_out", []), ("llama", "mlp.down_proj", ["*.down_proj"])],
)
def test_the_last_projection_call_ends_the_statistics_pass_of_every_batch_but_the_first(family, suffix, skip):
    model = _model(family)  # two blocks; with down_proj skipped, up_proj's call is the last tracked one
    counts = _completed_forwards(model, suffix)
    prune(model, tokens(6, 32), method="wanda", sparsity=0.5, n_samples=6, seq_len=32, batch_size=2, skip=skip)
    first, last = sorted(counts)
    # statistics: only the first of 3 batches reaches the call's own forward; recompute: 3 batches, first block
    # only; capturing the inputs runs the first block once to learn the shape of its output
    assert counts == {first: 1 + 3 + 1, last: 1}


class _Routed(nn.Module):
    """Two projections whose calls depend on the data: ``b`` runs only for a positive first input, and the
    order of ``a`` and ``b`` flips with the sign of the second."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, second = (self.a, self.b) if x[0, 0, 1] > 0 else (self.b, self.a)
        y = first(x)
        return second(y) if x[0, 0, 0] > 0 else y


def _signs(*pairs: tuple[float, float]) -> list[BlockBatch]:
    batches = []
    for index, (s0, s1) in enumerate(pairs):
        hidden = torch.randn(1, 3, 4, generator=torch.Generator().manual_seed(index))
        hidden[0, 0, 0], hidden[0, 0, 1] = s0, s1
        batches.append(BlockBatch(hidden, [((), {})]))
    return batches


@pytest.mark.parametrize(
    "signs",
    [
        [(-1.0, 1.0), (1.0, 1.0), (1.0, 1.0)],  # b not reached by the first batch: no exit learned
        [(1.0, 1.0), (1.0, -1.0), (1.0, 1.0)],  # the second batch calls b before a: it strays, runs in full
    ],
)
def test_calls_that_depend_on_the_data_are_collected_in_full(signs):
    block = _Routed()
    sums = []
    for stop_early in (True, False):
        collector = StatsCollector({"a": block.a, "b": block.b}, hessian=True, stop_early=stop_early)
        run_block(block, 0, CapturedReplay(_signs(*signs)), None, collector, replace=False)
        collector.close()
        sums.append({n: (s.tokens, s.xxt) for n, s in collector.stats.items()})
        if stop_early:
            assert collector.order is not None and not collector.order.enabled
    assert sums[0].keys() == sums[1].keys() == {"a", "b"}
    for name in ("a", "b"):
        assert sums[0][name][0] == sums[1][name][0]
        assert torch.equal(sums[0][name][1], sums[1][name][1]), name


def test_call_order_counts_repeated_calls_of_one_projection():
    order = CallOrder({"shared", "out"})
    assert [order.called(n) for n in ("shared", "shared", "out")] == [False, False, False]
    order.new_run()
    assert [order.called(n) for n in ("shared", "shared", "out")] == [False, False, True]
    order.new_run()
    assert [order.called(n) for n in ("shared", "out")] == [False, False] and not order.enabled


def test_a_pass_that_replaces_the_hidden_states_refuses_a_collector_that_stops_early():
    model = tiny_model("llama")
    stack = find_decoder_stack(model)
    block = stack.blocks[0]
    collector = StatsCollector({"q": block.self_attn.q_proj}, hessian=False)
    with pytest.raises(ValueError, match="stop_early=False"):
        run_block(block, 0, CapturedReplay([]), None, collector, replace=True)
    collector.close()


def test_projections_fed_the_very_same_tensor_share_one_statistics_object():
    model = tiny_model("llama")
    stack = find_decoder_stack(model)
    modules = dict(stack.blocks[0].named_modules())
    names = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj"]
    batches = capture_block_inputs(model, stack, tokens(4, 16), 2)
    collector = StatsCollector({n: modules[n] for n in names + ["mlp.down_proj"]}, hessian=False)
    run_block(stack.blocks[0], 0, CapturedReplay(batches), None, collector, replace=False)
    collector.close()
    stats = collector.stats
    assert stats[names[0]] is stats[names[1]] is stats[names[2]] and stats[names[4]] is stats[names[5]]
    assert len({id(s) for s in stats.values()}) == 4  # qkv, o, gate/up, down
    assert stats[names[0]].tokens == 4 * 16  # counted once, not three times
