"""Structured pruning of nn.LSTM, nn.GRU and nn.RNN: hidden units are channels.

The oracle: a hidden unit whose gate rows are zero stays exactly 0 at every step (LSTM: i = f =
o = 0.5 and g = tanh(0) = 0, so c = 0.5 c + 0 = 0 and h = o tanh(c) = 0; GRU: n = tanh(0) = 0,
so h = 0.5 h = 0; RNN: h = tanh(0) = 0); with its columns in ``weight_hh`` and in the next
layer zeroed too it contributes nothing, so removing it must leave every output unchanged.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from prunekit.torch import (
    analyze_dependencies,
    count_params,
    export_onnx,
    load_pruned,
    prune_channels,
    remove_channels,
    save_pruned,
)
from prunekit.torch.structured.plan import apply_plan
from tests.assertions import assert_same_outputs
from tests.torch.structured_helpers import one_torch_thread, run_oracle, silence_channels  # noqa: F401  (autouse)

GATES = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}
SILENCED_UNITS = [1, 4]
SILENCED_INPUTS = [0, 3]


class RecurrentNet(nn.Module):
    """Linear(5 -> 8) -> tanh -> recurrent(8 -> 6 units) -> Linear(all steps -> 3)."""

    def __init__(self, cell: type[nn.RNNBase], num_layers: int, bidirectional: bool, batch_first: bool):
        super().__init__()
        self.inp = nn.Linear(5, 8)
        self.rnn = cell(8, 6, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first)
        self.out = nn.Linear(6 * (2 if bidirectional else 1), 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(torch.tanh(self.inp(x)))
        return self.out(h)


class LastStepClassifier(nn.Module):
    """Embedding(50 -> 16) -> LSTM(16 -> 24) -> Linear on the last step -> 4 classes."""

    def __init__(self):
        super().__init__()
        self.emb, self.lstm, self.fc = nn.Embedding(50, 16), nn.LSTM(16, 24, batch_first=True), nn.Linear(24, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.emb(ids))
        return self.fc(h[:, -1])


class GivenState(nn.Module):
    """An LSTM whose initial state comes from the caller."""

    def __init__(self):
        super().__init__()
        self.inp, self.lstm, self.fc = nn.Linear(5, 8), nn.LSTM(8, 6, batch_first=True), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.inp(x), (h0, c0))
        return self.fc(h[:, -1])


class ComputedState(nn.Module):
    """A GRU whose initial state is computed from a context vector by a Linear."""

    def __init__(self):
        super().__init__()
        self.ctx, self.inp = nn.Linear(4, 6), nn.Linear(5, 8)
        self.gru, self.fc = nn.GRU(8, 6, batch_first=True), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        h0 = torch.tanh(self.ctx(context)).unsqueeze(0)
        return self.fc(self.gru(self.inp(x), h0)[0])


class ReturnsState(nn.Module):
    """A GRU whose final state is a model output."""

    def __init__(self):
        super().__init__()
        self.inp, self.gru = nn.Linear(5, 8), nn.GRU(8, 6, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gru(self.inp(x))[1]


class WithHead(nn.Module):
    """Linear(5 -> 8) -> ReLU -> a recurrent module -> Linear(all steps -> 3)."""

    def __init__(self, rnn: nn.RNNBase):
        super().__init__()
        self.pre, self.rnn = nn.Sequential(nn.Linear(5, 8), nn.ReLU()), rnn
        self.fc = nn.Linear(rnn.hidden_size * (2 if rnn.bidirectional else 1), 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.rnn(self.pre(x))[0])


class Packed(nn.Module):
    """A GRU run on a PackedSequence of variable-length inputs."""

    def __init__(self):
        super().__init__()
        self.inp, self.gru, self.fc = nn.Linear(5, 8), nn.GRU(8, 6, batch_first=True), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(self.inp(x), lengths, batch_first=True, enforce_sorted=False)
        h, _ = pad_packed_sequence(self.gru(packed)[0], batch_first=True)
        return self.fc(h[:, 0])


def _built(cell, num_layers, bidirectional, batch_first) -> nn.Module:
    torch.manual_seed(0)
    return RecurrentNet(cell, num_layers, bidirectional, batch_first).eval()


def _hand_count(cell, num_layers: int, bidirectional: bool, units: int, features: int) -> int:
    """Parameters of RecurrentNet with ``features`` inputs to the recurrent layer and ``units`` units."""
    directions = 2 if bidirectional else 1
    rows = GATES[cell] * units
    recurrent = 0
    for layer in range(num_layers):
        width = features if layer == 0 else directions * units
        recurrent += directions * (rows * width + rows * units + 2 * rows)
    return (5 * features + features) + recurrent + (directions * units * 3 + 3)


CASES = [
    (cell, layers, bidirectional, batch_first)
    for cell in (nn.LSTM, nn.GRU, nn.RNN)
    for layers in (1, 2)
    for bidirectional in (False, True)
    for batch_first in (False, True)
]


def _case_id(case) -> str:
    cell, layers, bidirectional, batch_first = case
    return f"{cell.__name__}-{layers}layer-{'bi' if bidirectional else 'uni'}-{'bf' if batch_first else 'tf'}"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_hidden_units_and_input_features_are_groups_of_their_own(case):
    model = _built(*case)
    graph = analyze_dependencies(model, torch.randn(4, 3, 5))
    assert {g.name: (g.size, g.exact) for g in graph.groups} == {"inp": (8, True), "rnn": (6, True)}
    assert graph.group("rnn").consumers == ["rnn", "out"]
    assert graph.unsupported == []


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_silenced_units_output_zero_at_every_step(case):
    model, x = _built(*case), torch.randn(4, 3, 5)
    graph = analyze_dependencies(model, x)
    silence_channels(graph, graph.group("rnn"), np.array(SILENCED_UNITS))
    with torch.no_grad():
        h, _ = model.rnn(torch.tanh(model.inp(x)))
    directions = 2 if case[2] else 1
    columns = [d * 6 + j for d in range(directions) for j in SILENCED_UNITS]
    assert torch.count_nonzero(h[..., columns]) == 0
    assert torch.count_nonzero(h) == h.numel() - h[..., columns].numel()


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_removing_silenced_units_leaves_outputs_unchanged(case):
    cell, layers, bidirectional, batch_first = case
    model, x = _built(*case), torch.randn(4, 3, 5)
    graph = analyze_dependencies(model, x)
    silence_channels(graph, graph.group("rnn"), np.array(SILENCED_UNITS))
    silence_channels(graph, graph.group("inp"), np.array(SILENCED_INPUTS))
    with torch.no_grad():
        expected = model(x)
    result = remove_channels(model, x, {"rnn": SILENCED_UNITS, "inp": SILENCED_INPUTS})
    pruned = result.model
    with torch.no_grad():
        assert_same_outputs(pruned(x), expected, atol=1e-5, rtol=1e-5)
    assert (pruned.rnn.hidden_size, pruned.rnn.input_size, pruned.inp.out_features) == (4, 6, 6)
    assert pruned.out.in_features == 4 * (2 if bidirectional else 1)
    assert count_params(pruned) == _hand_count(cell, layers, bidirectional, 4, 6) == result.report.params_after
    assert result.report.params_before == _hand_count(cell, layers, bidirectional, 6, 8)


VARIANTS = {
    "lstm_3_layers_no_bias_unbatched": (lambda: nn.LSTM(8, 6, 3, bias=False, bidirectional=True), (7, 5)),
    "rnn_relu_2_layers": (lambda: nn.RNN(8, 6, 2, nonlinearity="relu"), (7, 2, 5)),
    "gru_no_bias_unbatched": (lambda: nn.GRU(8, 6, bias=False, batch_first=True), (7, 5)),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variants_without_bias_unbatched_or_relu_pass_the_oracle(name):
    build, shape = VARIANTS[name]
    torch.manual_seed(0)
    model, x = WithHead(build()).eval(), torch.randn(*shape)
    expected, actual, result = run_oracle(model, x, fraction=0.5, seed=0)
    assert result.removed == {"pre.0": [2, 3, 4, 6], "rnn": [0, 4, 5]}
    assert (result.model.rnn.hidden_size, result.model.rnn.input_size) == (3, 4)
    assert_same_outputs(actual, expected, atol=1e-5, rtol=1e-5)


def test_pruned_recurrent_module_keeps_its_keys_deepcopies_and_runs_from_its_new_weights():
    model, x = _built(nn.LSTM, 2, True, True), torch.randn(4, 3, 5)
    pruned = remove_channels(model, x, {"rnn": [0, 5]}).model
    assert list(pruned.state_dict()) == list(model.state_dict())
    assert all(a is b for a, b in zip(pruned.rnn._flat_weights, pruned.rnn.parameters()))
    with torch.no_grad():
        before = pruned(x)
        assert_same_outputs(copy.deepcopy(pruned)(x), before, atol=0, rtol=0)
        pruned.rnn.weight_hh_l1.zero_()
        assert not torch.equal(pruned(x), before)


def test_undoing_a_plan_puts_the_recurrent_module_back_on_its_original_weights():
    model, x = _built(nn.GRU, 2, True, False), torch.randn(4, 3, 5)
    with torch.no_grad():
        expected = model(x)
    plan = remove_channels(model, x, {"rnn": [2], "inp": [7]}).plan
    undo = apply_plan(model, plan)
    assert model.rnn.hidden_size == 5
    undo()
    assert (model.rnn.hidden_size, model.rnn.input_size) == (6, 8)
    with torch.no_grad():
        assert_same_outputs(model(x), expected, atol=0, rtol=0)


def test_round_to_counts_hidden_units_not_gate_rows():
    model, x = _built(nn.LSTM, 1, False, True), torch.randn(4, 3, 5)
    result = prune_channels(model, x, 0.5, round_to=4, layer_ratios={"inp": 0.0})
    assert result.model.rnn.hidden_size == 4


def test_half_ratio_prunes_an_embedding_lstm_classifier_exports_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model, ids = LastStepClassifier().eval(), torch.randint(0, 50, (3, 7))
    result = prune_channels(model, ids, 0.5)
    pruned = result.model.eval()
    assert (pruned.emb.embedding_dim, pruned.lstm.input_size, pruned.lstm.hidden_size, pruned.fc.in_features) == (8, 8, 12, 12)
    hand = 50 * 8 + (4 * 12 * 8 + 4 * 12 * 12 + 2 * 4 * 12) + (12 * 4 + 4)
    assert result.report.params_after == count_params(pruned) == hand
    assert result.report.params_before == count_params(model) == 50 * 16 + (4 * 24 * 16 + 4 * 24 * 24 + 8 * 24) + 100
    with torch.no_grad():
        output = pruned(ids)
    assert output.shape == (3, 4)

    exported = export_onnx(pruned, ids, tmp_path / "lstm.onnx")
    assert exported.check is not None and exported.check.max_abs_error < 1e-4

    save_pruned(result, tmp_path / "lstm.safetensors")
    loaded = load_pruned(tmp_path / "lstm.safetensors", LastStepClassifier).eval()
    assert loaded.lstm.hidden_size == 12
    with torch.no_grad():
        assert_same_outputs(loaded(ids), output, atol=1e-6, rtol=1e-6)


def test_an_initial_state_passed_in_as_a_model_input_keeps_the_units():
    model = GivenState().eval()
    inputs = (torch.randn(2, 4, 5), torch.zeros(1, 2, 6), torch.zeros(1, 2, 6))
    graph = analyze_dependencies(model, inputs)
    assert {g.name: g.size for g in graph.groups} == {"inp": 8}
    result = prune_channels(model, inputs, 0.5)
    assert (result.model.lstm.hidden_size, result.model.lstm.input_size) == (6, 4)


def test_an_initial_state_computed_by_a_layer_ties_its_channels_to_the_units():
    torch.manual_seed(0)
    model, inputs = ComputedState().eval(), (torch.randn(2, 5, 5), torch.randn(2, 4))
    graph = analyze_dependencies(model, inputs)
    assert {g.name: g.size for g in graph.groups} == {"ctx": 6, "inp": 8}
    assert graph.group("ctx").consumers == ["gru", "fc"]
    expected, actual, result = run_oracle(model, inputs, fraction=0.5, seed=0)
    assert (result.model.ctx.out_features, result.model.gru.hidden_size) == (3, 3)
    assert_same_outputs(actual, expected, atol=1e-5, rtol=1e-5)


def test_a_final_state_returned_by_the_model_keeps_the_units():
    graph = analyze_dependencies(ReturnsState().eval(), torch.randn(2, 4, 5))
    assert {g.name: g.size for g in graph.groups} == {"inp": 8}


def test_a_packed_sequence_keeps_the_units_and_says_so():
    model, inputs = Packed().eval(), (torch.randn(2, 4, 5), torch.tensor([4, 2]))
    graph = analyze_dependencies(model, inputs)
    assert graph.groups == []
    assert ("gru:gru", "packed sequences are not followed") in graph.unsupported


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
def test_an_lstm_with_projections_keeps_its_units_and_says_so():
    model = nn.Sequential(nn.Linear(5, 8), nn.LSTM(8, 6, proj_size=3)).eval()
    graph = analyze_dependencies(model, torch.randn(4, 2, 5))
    assert [g.name for g in graph.groups] == []
    assert graph.unsupported == [("1:lstm", "LSTM with proj_size: its projected state is not followed, so its units are kept")]
