"""Benchmark: save and load seconds and file size of the compact file, entropy="fast" vs "best".

A model of 12 Linear weights of 2048 x 2048 (50.4M elements, 192 MiB in fp32) pruned to 90 % by
magnitude, plus biases, saved with ``save_compact`` as int8 and fp32 in both entropy modes and
loaded back. The two modes are interleaved (fast best, best fast, ... the order alternating each
round); medians over the rounds. ``"auto"`` picks ``"fast"`` at this size and ``"best"`` below
64 MiB of tensors.

Run: ``python benchmarks/compact_entropy.py`` (``--quick``: 4 layers, 16.8M elements). The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from prunekit.artifacts.compact import load_compact, save_compact

MODES = ("fast", "best")


def _model(layers: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    state = {}
    for i in range(layers):
        weight = rng.standard_normal((2048, 2048)).astype(np.float32)
        weight[np.abs(weight) < 1.6449] = 0  # |N(0,1)| < 1.645 for 90 % of the weights
        state[f"layer{i}.weight"] = weight
        state[f"layer{i}.bias"] = rng.standard_normal(2048).astype(np.float32)
    return state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 layers instead of 12")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    state = _model(4 if args.quick else 12)
    numel = sum(array.size for array in state.values())
    work = Path(tempfile.mkdtemp(prefix="prunekit-bench-compact-"))
    times: dict[tuple[str, str, str], list[float]] = {}
    sizes: dict[tuple[str, str], int] = {}
    for round_ in range(args.rounds):
        for dtype in ("int8", "fp32"):
            for mode in MODES if round_ % 2 == 0 else MODES[::-1]:
                path = work / f"{dtype}-{mode}.safetensors"
                start = time.perf_counter()
                save_compact(state, path, dtype, entropy=mode)
                times.setdefault((dtype, mode, "save"), []).append(time.perf_counter() - start)
                start = time.perf_counter()
                load_compact(path)
                times.setdefault((dtype, mode, "load"), []).append(time.perf_counter() - start)
                sizes[(dtype, mode)] = path.stat().st_size
                path.unlink()
    figures: dict[str, object] = {"benchmark": "compact_entropy", "numel": numel, "rounds": args.rounds}
    print(f"{numel:,} elements, 90 % sparse; medians of {args.rounds} rounds (wall clock, shared machine: noisy)")
    print(f"{'dtype':6} {'entropy':8} {'save s':>8} {'load s':>8} {'MiB':>8}")
    for dtype in ("int8", "fp32"):
        for mode in MODES:
            save_s = statistics.median(times[(dtype, mode, "save")])
            load_s = statistics.median(times[(dtype, mode, "load")])
            mebibytes = sizes[(dtype, mode)] / 2**20
            print(f"{dtype:6} {mode:8} {save_s:8.2f} {load_s:8.2f} {mebibytes:8.2f}")
            figures.update({f"{mode}_{dtype}_save_s": round(save_s, 2), f"{mode}_{dtype}_load_s": round(load_s, 2)})
            figures[f"{mode}_{dtype}_mib"] = round(mebibytes, 3)
    figures["quick"] = args.quick
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
