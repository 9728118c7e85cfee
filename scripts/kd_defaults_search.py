"""Choose the distillation defaults (temperature, alpha) on the digits *validation* split, never the test split.

The setting of ``benchmarks/recovery.py``'s ``kd_gain_pt``: the PyTorch DigitsCNN trained 10 epochs,
75% of its channels removed, then each arm (plain fine-tuning, and distillation at every grid
point) trains the same pruned student for the same epochs on the same batches (Adam, lr 1e-3).
Accuracy is read on ``split.x_val`` (the held-out validation split), mean over the seeds; the
teacher's mean top-class probability on the training and validation images is printed too
(how much its soft targets carry beyond the labels).

Run: ``python scripts/kd_defaults_search.py [--seeds 0 1 2 3 4] [--epochs 3]``; the last line is JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
from statistics import mean

import torch

from prunekit.data import load_digits
from prunekit.torch import DigitsCNN, evaluate, fit, make_loader, prune_channels
from prunekit.torch.recover import distill

GRID = [(1.0, 0.5), (1.0, 0.9), (2.0, 0.5), (2.0, 0.9), (4.0, 0.5), (4.0, 0.9)]


@torch.no_grad()
def _top_probability(model: torch.nn.Module, x, temperature: float) -> float:
    model.eval()
    return float(torch.softmax(model(torch.as_tensor(x)) / temperature, -1).max(-1).values.mean())


def _one_seed(seed: int, epochs: int) -> dict[str, float]:
    split = load_digits(seed=seed)
    torch.manual_seed(seed)
    dense = DigitsCNN()
    fit(dense, make_loader(split.x_train, split.y_train, seed=seed), epochs=10, lr=3e-3, progress=False)
    dense.eval()
    val = make_loader(split.x_val, split.y_val, shuffle=False)
    student = prune_channels(copy.deepcopy(dense), torch.as_tensor(split.x_val[:2]), ratio=0.75).model
    row = {
        "teacher_top_p_train": _top_probability(dense, split.x_train, 1.0),
        "teacher_top_p_val": _top_probability(dense, split.x_val, 1.0),
    }
    tuned = copy.deepcopy(student)
    torch.manual_seed(seed)
    fit(tuned, make_loader(split.x_train, split.y_train, seed=seed), epochs=epochs, lr=1e-3, progress=False)
    row["finetune"] = evaluate(tuned, val)
    for temperature, alpha in GRID:
        distilled = copy.deepcopy(student)
        torch.manual_seed(seed)
        distill(distilled, dense, make_loader(split.x_train, split.y_train, seed=seed), epochs=epochs, lr=1e-3,
                temperature=temperature, alpha=alpha, progress=False)  # fmt: skip
        row[f"T={temperature:g},alpha={alpha:g}"] = evaluate(distilled, val)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [_one_seed(seed, args.epochs) for seed in args.seeds]
    means = {key: mean(row[key] for row in rows) for key in rows[0]}
    for key, value in means.items():
        gain = "" if key in ("finetune",) or key.startswith("teacher") else f"  {100 * (value - means['finetune']):+.2f} pt"
        print(f"{key:24} {value:.4f}{gain}")
    print(json.dumps({"search": "kd_defaults", "split": "val", "seeds": args.seeds, "epochs": args.epochs,
                      "means": {k: round(v, 4) for k, v in means.items()}}))  # fmt: skip


if __name__ == "__main__":
    main()
