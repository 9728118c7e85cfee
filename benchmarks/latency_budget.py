"""Does ``allocate_channels`` meet a measured latency budget? Budget vs latency re-measured independently.

For a compute-bound MLP (batch 256) and the digits CNN (batch 64), allocate channel ratios for
latency budgets of 30%, 50% and 70% of dense with ``prunekit.torch.allocate_channels`` (a
sensitivity table that makes later layers cheaper to prune, so the allocations are uneven). Then
the chosen smaller model and the dense one are timed again with this directory's harness
(``time_interleaved``, call by call, not the allocator's ``latency_ratio``), and the re-measured
latency fraction (paired per round) is compared with the budget. One torch thread throughout.

    python benchmarks/latency_budget.py            # 8 timing rounds per check
    python benchmarks/latency_budget.py --quick    # 3 rounds, budgets 50% only

Figures (last line, JSON): ``latency_budget_max_error`` (largest |re-measured fraction - budget|,
in fractions of dense latency), ``latency_budget_max_overshoot`` (largest re-measured excess over
the budget, 0 when every budget is met), ``latency_budget_mean_error``, ``allocation_seconds_max``
(the slowest allocation), and per case the allocator's own measurement, the re-measurement and
the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _timing import malloc_settings, pin_malloc_settings, time_interleaved  # noqa: E402
from torch import nn  # noqa: E402

from prunekit.core.tables import ResultTable  # noqa: E402
from prunekit.torch import DigitsCNN, allocate_channels, apply_channel_ratios, channel_layers, count_macs  # noqa: E402
from prunekit.torch.tradeoffs.sensitivity import SensitivityTable  # noqa: E402


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))


def graded_table(layers: list[str]) -> SensitivityTable:
    """Earlier layers drop more: the greedy path prunes the last layers first."""
    ratios = [0.25, 0.5, 0.75, 0.9]
    drop = {layer: 0.02 * (len(layers) - index) for index, layer in enumerate(layers)}
    return SensitivityTable(1.0, ratios, {layer: [1.0 - drop[layer] * r for r in ratios] for layer in layers})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 timing rounds and the 50%% budget only")
    args = parser.parse_args()
    pin_malloc_settings()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rounds = 3 if args.quick else 8
    budgets = [0.5] if args.quick else [0.3, 0.5, 0.7]
    cases = {
        "mlp-1024 (batch 256)": (mlp().eval(), torch.randn(256, 256)),
        "digits CNN (batch 64)": (DigitsCNN().eval(), torch.randn(64, 1, 8, 8)),
    }
    load_before = os.getloadavg()[0]
    table = ResultTable(
        "Latency budget vs re-measured latency (fraction of dense, 1 thread)",
        ["model", "budget", "allocator measured", "re-measured", "MACs / dense", "seconds"],
    )
    results = []
    for name, (model, batch) in cases.items():
        layers = channel_layers(model, batch)
        for budget in budgets:
            started = time.perf_counter()
            allocation = allocate_channels(graded_table(layers), model, batch, budget, "latency")
            seconds = time.perf_counter() - started
            smaller = apply_channel_ratios(model, batch, allocation.ratios)
            with torch.inference_mode():
                timings = time_interleaved(
                    {"dense": lambda m=model, b=batch: m(b), "smaller": lambda m=smaller, b=batch: m(b)},
                    rounds=rounds,
                    repeats=10,
                )
            remeasured = statistics.median(
                s / d for s, d in zip(timings["smaller"].round_medians, timings["dense"].round_medians)
            )
            macs = count_macs(smaller, batch).total / count_macs(model, batch).total
            table.add_row(
                name, f"{budget:.0%}", f"{allocation.cost_fraction:.1%}", f"{remeasured:.1%}", f"{macs:.1%}", f"{seconds:.1f}"
            )
            results.append(
                {
                    "model": name,
                    "budget": budget,
                    "allocator_fraction": round(allocation.cost_fraction, 4),
                    "remeasured_fraction": round(remeasured, 4),
                    "macs_fraction": round(macs, 4),
                    "seconds": round(seconds, 2),
                    "ratios": {layer: round(r, 3) for layer, r in allocation.ratios.items()},
                }
            )
    table.print()
    errors = [abs(r["remeasured_fraction"] - r["budget"]) for r in results]
    print(
        f"load average before/after: {load_before:.2f}/{os.getloadavg()[0]:.2f}; cores: {os.cpu_count()}; "
        f"malloc: {malloc_settings()}"
    )
    overshoot = max(max(r["remeasured_fraction"] - r["budget"], 0.0) for r in results)
    print(
        json.dumps(
            {
                "benchmark": "latency_budget",
                "latency_budget_max_error": round(max(errors), 4),
                "latency_budget_max_overshoot": round(overshoot, 4),
                "latency_budget_mean_error": round(statistics.mean(errors), 4),
                "allocation_seconds_max": round(max(r["seconds"] for r in results), 2),
                "cases": results,
            }
        )
    )


if __name__ == "__main__":
    main()
