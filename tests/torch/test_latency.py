"""Latency (warm-up, median, p90 per batch size and device), peak inference memory, and the per-layer summary."""

import json

import pytest
import torch
from torch import nn

from prunekit.cli import main
from prunekit.errors import ConfigError
from prunekit.torch import DigitsCNN, prune_unstructured
from prunekit.torch.measure.latency import available_devices, latency_ratio, measure_latency, measure_peak_memory
from prunekit.torch.measure.summary import summarize
from tests.torch.cost_clock import MacClock


def test_latency_reports_one_row_per_device_and_batch_size():
    results = measure_latency(DigitsCNN(), (1, 8, 8), batch_sizes=(1, 4), warmup=1, repeats=5)
    assert [(r.device, r.batch_size) for r in results] == [(d, b) for d in available_devices() for b in (1, 4)]
    for result in results:
        assert 0 < result.median_ms <= result.p90_ms
        assert result.runs == 5


def test_latency_restores_thread_count_and_training_mode():
    model = DigitsCNN().train()
    before = torch.get_num_threads()
    measure_latency(model, (1, 8, 8), batch_sizes=(2,), devices=["cpu"], warmup=0, repeats=2, threads=1)
    assert torch.get_num_threads() == before
    assert model.training


def test_latency_rejects_a_batch_size_of_zero():
    with pytest.raises(ConfigError, match="batch_sizes"):
        measure_latency(DigitsCNN(), (1, 8, 8), batch_sizes=(0,))


def test_latency_ratio_is_the_median_of_paired_per_round_ratios_of_the_clock():
    wide, narrow = nn.Linear(512, 2048), nn.Linear(512, 256)  # 8x fewer MACs
    inputs = torch.randn(64, 512)
    with MacClock().running() as clock:
        assert latency_ratio(wide, wide, inputs, rounds=5, warmup=2, clock=clock) == pytest.approx(1.0, rel=1e-12)
        assert clock.reads == 2 * 2 * 5  # two reads per timed call, both models every round; the warm-up untimed
        assert clock.macs == (2 + 5) * 2 * 64 * 512 * 2048
    with MacClock().running() as clock:
        assert latency_ratio(narrow, wide, inputs, rounds=5, clock=clock) == pytest.approx(256 / 2048, rel=1e-12)
    # load in two of five rounds (reads 1 and 5 end the narrow model's calls of rounds 0 and 1): the median ignores it
    with MacClock(spikes={1: 1.0, 5: 1.0}).running() as clock:
        assert latency_ratio(narrow, wide, inputs, rounds=5, warmup=0, clock=clock) == pytest.approx(1 / 8, rel=1e-12)
    with MacClock(spikes={1: 1.0, 5: 1.0, 9: 1.0}).running() as clock:  # in three of five it is the latency
        assert latency_ratio(narrow, wide, inputs, rounds=5, warmup=0, clock=clock) > 1


def test_latency_ratio_by_the_real_clock_finds_an_eighth_of_the_work_faster():
    # real timing, loose on purpose: the exact arithmetic is pinned above; benchmarks/latency_budget.py measures
    torch.manual_seed(0)
    wide, narrow = nn.Linear(512, 2048), nn.Linear(512, 256)
    inputs = torch.randn(64, 512)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # several threads on contended cores wait alike and push every ratio to 1
    try:
        assert latency_ratio(narrow, wide, inputs, rounds=30) < 0.8
    finally:
        torch.set_num_threads(threads)
    narrow.train()
    latency_ratio(narrow, wide, {"input": inputs}, rounds=2)  # keyword inputs
    assert narrow.training and wide.training


def test_latency_ratio_rejects_zero_rounds():
    with pytest.raises(ConfigError, match="rounds should be >= 1"):
        latency_ratio(nn.Linear(2, 2), nn.Linear(2, 2), torch.zeros(1, 2), rounds=0)


def test_peak_memory_counts_weights_input_and_live_activations_of_a_linear_chain():
    model = nn.Sequential(nn.Linear(100, 200), nn.Linear(200, 50))
    memory = measure_peak_memory(model, (100,), batch_size=8)
    weights = 4 * (100 * 200 + 200 + 200 * 50 + 50)
    assert memory.weight_bytes == weights
    # peak: input (8x100) and first output (8x200) alive while the second output (8x50) is computed
    assert memory.peak_activation_bytes == 4 * (8 * 100 + 8 * 200 + 8 * 50)
    assert memory.peak_bytes == weights + memory.peak_activation_bytes


def test_peak_memory_grows_with_batch_size():
    small = measure_peak_memory(DigitsCNN(), (1, 8, 8), batch_size=1)
    large = measure_peak_memory(DigitsCNN(), (1, 8, 8), batch_size=16)
    assert large.peak_activation_bytes > 8 * small.peak_activation_bytes


def test_summary_counts_params_nonzeros_and_hand_counted_macs_per_layer():
    model = DigitsCNN()
    summary = summarize(model, torch.zeros(1, 1, 8, 8))
    conv2 = summary.layer("conv2")
    assert conv2.macs == 64 * 8 * 8 * 32 * 9
    assert conv2.params == 64 * 32 * 9 + 64
    assert summary.layer("fc1").macs == 1024 * 128
    assert summary.params == sum(p.numel() for p in model.parameters())


def test_summary_sparse_macs_follow_weight_density():
    model = prune_unstructured(DigitsCNN(), 0.75)
    summary = summarize(model, torch.zeros(1, 1, 8, 8))
    fc1 = summary.layer("fc1")
    assert fc1.nonzeros == 1024 * 128 // 4 + 128  # biases are not pruned
    assert fc1.sparse_macs == 1024 * 128 // 4
    assert summary.layer("bn1").sparse_macs == 0


def test_inspect_command_prints_the_layer_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "inspect.json"
    code = main(
        [
            "inspect",
            "prunekit.torch:DigitsCNN",
            "--input-shape",
            "1,8,8",
            "--latency",
            "--batch-sizes",
            "1",
            "--repeats",
            "3",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "conv2" in printed and "1,179,648" in printed
    result = json.loads(out.read_text())
    assert result["summary"]["macs"] == 18432 + 1179648 + 131072 + 1280
    assert result["latency"][0]["batch_size"] == 1


def test_inspect_command_asks_for_the_factory_of_a_weight_file(tmp_path, capsys):
    weights = tmp_path / "w.pt"
    torch.save(DigitsCNN().state_dict(), weights)
    assert main(["inspect", str(weights), "--input-shape", "1,8,8"]) == 2
    assert "--factory" in capsys.readouterr().err
