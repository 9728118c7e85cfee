"""Dynamic sparse training (RigL, SET) vs. static sparsity vs. dense, trained from scratch on the bundled digits.

Every arm trains its own freshly initialised model (the same initial weights for one seed) on the
same batches for the same number of steps with Adam. ``static`` prunes by magnitude at
initialisation and keeps the mask; ``set`` and ``rigl`` start from that same mask and move it
every ``update_interval`` steps until 75 % of the training (drop fraction 0.3, cosine decay);
``dense`` is the unpruned reference. Test accuracy is averaged over 3 seeds; the arms run
interleaved (static, rigl, set, dense, rotating per seed), and ``rigl_overhead`` is the median over
seeds and models of RigL's training time ÷ the static arm's.

Run: ``python benchmarks/dynamic_sparsity.py [--quick]``. Last line: one JSON object with
``static_acc``, ``set_acc``, ``rigl_acc``, ``dense_acc`` (means over models and seeds),
``rigl_minus_static_pt`` (percentage points) and ``rigl_overhead``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _timing import malloc_settings, pin_malloc_settings  # noqa: E402
from torch import nn  # noqa: E402

from prunekit.data import load_digits  # noqa: E402
from prunekit.torch import DigitsCNN, DigitsMLP, Pruner, evaluate, make_loader  # noqa: E402
from prunekit.torch.dynamic import DynamicPruner  # noqa: E402

SPARSITY = 0.95
ARMS = ("static", "rigl", "set", "dense")
MODELS: dict[str, Callable[[], nn.Module]] = {"mlp": DigitsMLP, "cnn": DigitsCNN}


def _train(arm: str, factory: Callable[[], nn.Module], split, seed: int, epochs: int, lr: float) -> tuple[float, float, list]:
    torch.manual_seed(seed)
    model = factory()
    loader = make_loader(split.x_train, split.y_train, batch_size=64, seed=seed)
    steps = epochs * len(loader)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    pruner: Pruner | None = None
    if arm == "static":
        pruner = Pruner(model, SPARSITY, optimizer=optimizer)
    elif arm in ("set", "rigl"):
        interval = max(1, len(loader) // 2)
        pruner = DynamicPruner(
            model, SPARSITY, regrow=arm, end_step=int(0.75 * steps), update_interval=interval, drop_fraction=0.3, seed=seed
        )
        pruner.attach(optimizer)
    if pruner is not None:
        pruner.prune()
    started = time.perf_counter()
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            if pruner is not None:
                pruner.step()
    seconds = time.perf_counter() - started
    history = getattr(pruner, "history", [])
    if pruner is not None:
        pruner.strip()
    accuracy = evaluate(model, make_loader(split.x_test, split.y_test, batch_size=256, shuffle=False))
    return accuracy, seconds, history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the MLP only, fewer epochs")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    pin_malloc_settings()
    torch.set_num_threads(1)  # a fair time ratio on a shared machine, and bit-repeatable runs
    split = load_digits()
    models = {"mlp": MODELS["mlp"]} if args.quick else MODELS
    epochs = {"mlp": 20 if args.quick else 40, "cnn": 15}
    lr = {"mlp": 3e-3, "cnn": 2e-3}
    results: dict[str, dict[str, list[float]]] = {m: {a: [] for a in ARMS} for m in models}
    ratios: list[float] = []
    turnovers: dict[str, list[float]] = {"set": [], "rigl": []}
    for name, factory in models.items():
        for seed in range(args.seeds):
            order = ARMS[seed % len(ARMS) :] + ARMS[: seed % len(ARMS)]
            times = {}
            for arm in order:
                accuracy, seconds, history = _train(arm, factory, split, seed, epochs[name], lr[name])
                results[name][arm].append(accuracy)
                times[arm] = seconds
                if history:
                    turnovers[arm].append(history[-1]["turnover"])
            ratios.append(times["rigl"] / times["static"])
            print(
                f"{name} seed {seed}: " + ", ".join(f"{a} {results[name][a][-1]:.4f} ({times[a]:.1f} s)" for a in ARMS),
                flush=True,
            )
    print(f"\nsparsity {SPARSITY:.0%} from scratch, {args.seeds} seeds, 1 thread, malloc: {malloc_settings()}")
    print(f"{'model':<6} {'epochs':>6} " + " ".join(f"{a + '_acc':>11}" for a in ARMS))
    for name in models:
        means = " ".join(f"{np.mean(results[name][a]):>11.4f}" for a in ARMS)
        print(f"{name:<6} {epochs[name]:>6} {means}")
    mean = {a: float(np.mean([v for name in models for v in results[name][a]])) for a in ARMS}
    print(f"{'mean':<6} {'':>6} " + " ".join(f"{mean[a]:>11.4f}" for a in ARMS))
    print(f"final mask turnover: set {np.mean(turnovers['set']):.3f}, rigl {np.mean(turnovers['rigl']):.3f}")
    print(f"rigl training time / static: median {statistics.median(ratios):.3f} over {len(ratios)} runs")
    figures = {
        "benchmark": "dynamic_sparsity",
        "sparsity": SPARSITY,
        "seeds": args.seeds,
        "models": list(models),
        "static_acc": round(mean["static"], 4),
        "set_acc": round(mean["set"], 4),
        "rigl_acc": round(mean["rigl"], 4),
        "dense_acc": round(mean["dense"], 4),
        "rigl_minus_static_pt": round(100 * (mean["rigl"] - mean["static"]), 2),
        "rigl_overhead": round(statistics.median(ratios), 3),
    }
    for name in models:
        figures[f"{name}_rigl_minus_static_pt"] = round(
            100 * (np.mean(results[name]["rigl"]) - np.mean(results[name]["static"])), 2
        )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
