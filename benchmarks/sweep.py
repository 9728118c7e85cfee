"""Wall time of a 12-trial sweep (3 methods x 4 sparsities on a digits CNN) with 1 vs 2 worker processes.

Both variants run the same trials on the same trained dense model, one torch thread per worker
(1 worker runs in this process, 2 workers are spawned processes, their start-up included), in
interleaved rounds (1, 2, 2, 1, ...). Prints a table and, as its last line, one JSON object with
``parallel_speedup`` = median wall time with 1 worker / median wall time with 2 workers, and
``paired_speedup`` = median over rounds of the same ratio within a round.

    python benchmarks/sweep.py            # 3 rounds of each
    python benchmarks/sweep.py --quick    # 1 round of each
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _timing import malloc_settings, pin_malloc_settings  # noqa: E402

from prunekit.core.tables import ResultTable  # noqa: E402
from prunekit.sweep.digits import DigitsObjective  # noqa: E402
from prunekit.sweep.runner import grid, run_sweep  # noqa: E402

METHODS = ["one-shot", "layer", "gradual"]
SPARSITIES = [0.5, 0.7, 0.8, 0.9]
MODEL = {"channels": (32, 64), "hidden": 128}  # DigitsCNN as shipped


def one_sweep(objective: DigitsObjective, workers: int) -> tuple[float, list[float]]:
    trials = grid(METHODS, SPARSITIES)
    with tempfile.TemporaryDirectory(prefix="prunekit-sweep-bench-") as out:
        started = time.perf_counter()
        result = run_sweep(objective, trials, out, workers=workers)
        wall = time.perf_counter() - started
    failed = [r["id"] for r in result.failed]
    if failed:
        raise SystemExit(f"trials failed: {failed}")
    return wall, [r["metrics"]["accuracy"] for r in result.records]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round of each instead of three")
    args = parser.parse_args()
    pin_malloc_settings()
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    rounds = 1 if args.quick else 3
    objective = DigitsObjective.train(epochs=4, model_options=MODEL, finetune_epochs=1, latency_repeats=3)
    walls: dict[int, list[float]] = {1: [], 2: []}
    accuracies: dict[int, list[float]] = {}
    for round_index in range(rounds):
        order = (1, 2) if round_index % 2 == 0 else (2, 1)
        for workers in order:
            wall, accuracy = one_sweep(objective, workers)
            walls[workers].append(wall)
            accuracies[workers] = accuracy
            print(f"round {round_index + 1}: {workers} worker(s): {wall:.1f} s", flush=True)
    same = all(abs(a - b) < 1e-9 for a, b in zip(accuracies[1], accuracies[2]))
    medians = {w: statistics.median(v) for w, v in walls.items()}
    speedup = medians[1] / medians[2]
    paired = statistics.median(one / two for one, two in zip(walls[1], walls[2]))  # same round, same machine state
    table = ResultTable(
        "12-trial sweep wall time (DigitsCNN, 1 fine-tuning epoch per trial)", ["workers", "median s", "runs", "speedup"]
    )
    for workers in (1, 2):
        table.add_row(workers, f"{medians[workers]:.1f}", len(walls[workers]), f"{medians[1] / medians[workers]:.2f}")
    table.print()
    print(f"same accuracies with 1 and 2 workers: {same}; cores: {os.cpu_count()}; malloc: {malloc_settings()}")
    print(
        json.dumps(
            {
                "benchmark": "sweep",
                "trials": 12,
                "rounds": rounds,
                "seconds_1_worker": round(medians[1], 2),
                "seconds_2_workers": round(medians[2], 2),
                "parallel_speedup": round(speedup, 3),
                "paired_speedup": round(paired, 3),
                "same_results": same,
                "cpu_count": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
