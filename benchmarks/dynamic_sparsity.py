"""Dynamic sparse training (RigL, SET) vs. static sparsity vs. dense, trained from scratch on the bundled digits.

Every arm trains its own freshly initialised model (the same initial weights for one seed) on the
same batches for the same number of steps with Adam. ``static`` prunes by magnitude at
initialisation and keeps the mask; ``set`` and ``rigl`` start from that same mask and move it
every half epoch until 75 % of the training (drop fraction 0.3, cosine decay); ``dense`` is the
unpruned reference. Test accuracy is averaged over 3 seeds. The four arms train in lockstep, one
step each in turn (the order rotating every step), so drifts of a shared machine hit them alike;
``rigl_overhead`` is the median over seeds and models of RigL's summed step time ÷ the static arm's.

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
from prunekit.torch.unstructured.dynamic import DynamicPruner  # noqa: E402

SPARSITY = 0.95
ARMS = ("static", "rigl", "set", "dense")
MODELS: dict[str, Callable[[], nn.Module]] = {"mlp": DigitsMLP, "cnn": DigitsCNN}


class _Arm:
    """One arm's model, optimizer and pruner, trained one step at a time."""

    def __init__(self, arm: str, factory: Callable[[], nn.Module], seed: int, steps: int, steps_per_epoch: int, lr: float):
        torch.manual_seed(seed)  # the same initial weights in every arm
        self.model = factory()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.pruner: Pruner | None = None
        if arm == "static":
            self.pruner = Pruner(self.model, SPARSITY, optimizer=self.optimizer)
        elif arm in ("set", "rigl"):
            interval = max(1, steps_per_epoch // 2)
            self.pruner = DynamicPruner(
                self.model,
                SPARSITY,
                regrow=arm,
                end_step=int(0.75 * steps),
                update_interval=interval,
                drop_fraction=0.3,
                seed=seed,
            )
            self.pruner.attach(self.optimizer)
        if self.pruner is not None:
            self.pruner.prune()  # sparse from initialisation; the same mask in the three sparse arms
        self.seconds = 0.0

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        started = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(self.model(x), y).backward()
        self.optimizer.step()
        if self.pruner is not None:
            self.pruner.step()
        self.seconds += time.perf_counter() - started

    def finish(self, split) -> tuple[float, list]:
        history = list(getattr(self.pruner, "history", []))
        if self.pruner is not None:
            self.pruner.strip()
        return evaluate(self.model, make_loader(split.x_test, split.y_test, batch_size=256, shuffle=False)), history


def _train_arms(
    factory: Callable[[], nn.Module], split, seed: int, epochs: int, lr: float
) -> dict[str, tuple[float, float, list]]:
    """Train the four arms in lockstep on the same batches, their steps interleaved (rotating order), so
    machine drifts hit every arm alike."""
    loader = make_loader(split.x_train, split.y_train, batch_size=64, seed=seed)
    arms = {arm: _Arm(arm, factory, seed, epochs * len(loader), len(loader), lr) for arm in ARMS}
    for arm in arms.values():
        arm.model.train()
    step = 0
    for _ in range(epochs):
        for x, y in loader:
            shift = step % len(ARMS)
            for name in ARMS[shift:] + ARMS[:shift]:
                arms[name].step(x, y)
            step += 1
    results = {}
    for name, arm in arms.items():
        accuracy, history = arm.finish(split)
        results[name] = (accuracy, arm.seconds, history)
    return results


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
            trained = _train_arms(factory, split, seed, epochs[name], lr[name])
            for arm, (accuracy, _, history) in trained.items():
                results[name][arm].append(accuracy)
                if history:
                    turnovers[arm].append(history[-1]["turnover"])
            ratios.append(trained["rigl"][1] / trained["static"][1])
            line = ", ".join(f"{a} {trained[a][0]:.4f} ({trained[a][1]:.1f} s)" for a in ARMS)
            print(f"{name} seed {seed}: {line}", flush=True)
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
