"""Time per training step with a prunekit Pruner attached vs. no pruning vs. torch.nn.utils.prune.

All three variants train their own copy of the same model on the same batch, interleaved round
by round (A B C C B A ...), at the default thread count and at 1 thread. The pruners hold 80%
sparsity with masks recomputed every 100 steps (a gradual-pruning setting), so the figure
includes both the per-step masking and the periodic mask selection.

Run: ``python benchmarks/training_overhead.py [--quick]``. Last line: one JSON object with
``prunekit_overhead`` and ``torch_prune_overhead`` (step time / unpruned step time; the worst
model at the default thread count).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from _timing import malloc_settings, pin_malloc_settings, time_interleaved, torch_threads  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.utils import prune as torch_prune  # noqa: E402

from prunekit import ConstantSparsity  # noqa: E402
from prunekit.torch import DigitsCNN, Pruner  # noqa: E402

SPARSITY = 0.8


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))


MODELS: dict[str, tuple[Callable[[], nn.Module], int]] = {"digits_cnn": (DigitsCNN, 64), "mlp_1024": (_mlp, 128)}


def _step_fn(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    after: Callable[[], object] | None = None,
) -> Callable[[], None]:
    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        if after is not None:
            after()

    return step


def _variants(factory: Callable[[], nn.Module], batch: int) -> dict[str, Callable[[], None]]:
    torch.manual_seed(0)
    base = factory()
    x, y = torch.randn(batch, 1, 8, 8), torch.randint(0, 10, (batch,))

    plain = copy.deepcopy(base)
    plain_opt = torch.optim.SGD(plain.parameters(), lr=1e-3, momentum=0.9)

    ours = copy.deepcopy(base)
    ours_opt = torch.optim.SGD(ours.parameters(), lr=1e-3, momentum=0.9)
    pruner = Pruner(ours, ConstantSparsity(SPARSITY, begin_step=0, frequency=100), optimizer=ours_opt)

    theirs = copy.deepcopy(base)
    layers = [(m, "weight") for m in theirs.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    torch_prune.global_unstructured(layers, pruning_method=torch_prune.L1Unstructured, amount=SPARSITY)
    theirs_opt = torch.optim.SGD(theirs.parameters(), lr=1e-3, momentum=0.9)

    return {
        "no pruning": _step_fn(plain, plain_opt, x, y),
        "prunekit": _step_fn(ours, ours_opt, x, y, pruner.step),
        "torch.nn.utils.prune": _step_fn(theirs, theirs_opt, x, y),
    }


def _measure(rounds: int, repeats: int) -> dict[str, dict[str, float]]:
    figures: dict[str, dict[str, float]] = {}
    for name, (factory, batch) in MODELS.items():
        timings = time_interleaved(_variants(factory, batch), rounds=rounds, repeats=repeats, warmup=5)
        base = timings["no pruning"]
        figures[name] = {
            "step_ms": base.best * 1e3,
            "prunekit_overhead": timings["prunekit"].best / base.best,
            "torch_prune_overhead": timings["torch.nn.utils.prune"].best / base.best,
            "prunekit_overhead_mean": statistics.fmean(timings["prunekit"].samples) / statistics.fmean(base.samples),
        }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (noisier)")
    args = parser.parse_args()
    rounds, repeats = (4, 10) if args.quick else (12, 25)

    results = {"default": _measure(rounds, repeats)}
    with torch_threads(1):
        results["1 thread"] = _measure(rounds, repeats)

    print(f"training step time relative to no pruning ({SPARSITY:.0%} sparsity; best of per-round medians)")
    print(f"threads: default={torch.get_num_threads()}; malloc: {malloc_settings()}")
    print(f"{'threads':<9} {'model':<11} {'step ms':>8} {'prunekit':>9} {'(mean)':>8} {'torch.prune':>12}")
    for threads, per_model in results.items():
        for model, f in per_model.items():
            print(
                f"{threads:<9} {model:<11} {f['step_ms']:8.2f} {f['prunekit_overhead']:9.3f} "
                f"{f['prunekit_overhead_mean']:8.3f} {f['torch_prune_overhead']:12.3f}"
            )
    default = results["default"]
    summary = {
        "benchmark": "training_overhead",
        "prunekit_overhead": round(max(f["prunekit_overhead"] for f in default.values()), 4),
        "torch_prune_overhead": round(max(f["torch_prune_overhead"] for f in default.values()), 4),
        "prunekit_overhead_1thread": round(max(f["prunekit_overhead"] for f in results["1 thread"].values()), 4),
        "torch_prune_overhead_1thread": round(max(f["torch_prune_overhead"] for f in results["1 thread"].values()), 4),
        "models": {
            threads: {m: {k: round(v, 4) for k, v in f.items()} for m, f in per.items()} for threads, per in results.items()
        },
        "malloc": malloc_settings(),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    pin_malloc_settings()
    main()
