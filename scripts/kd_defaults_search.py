"""Choose the distillation defaults (temperature, alpha) on the digits *validation* split, never the test split.

The setting of ``benchmarks/recovery.py``'s ``kd_gain_pt``: the PyTorch DigitsCNN trained 10 epochs,
75% of its channels removed, then each arm (plain fine-tuning, and distillation at every grid
point) trains the same pruned student for the same epochs on the same batches (Adam, lr 1e-3).
Accuracy is read on ``split.x_val`` (the held-out validation split), mean over the seeds; the
teacher's mean top-class probability on the training and validation images is printed too
(how much its soft targets carry beyond the labels).

``--grid temperature`` (the default) searches temperature and alpha of logit distillation;
``--grid features`` adds feature distillation to the default logit term (T=1, alpha=0.5): the
penultimate features (the input of the logits layer, found without a name) and/or the last conv
block's output (``pool``), by raw MSE or the scale-free ``cosine`` / ``standardized`` distances,
at a few weights. Per-seed gains over fine-tuning are printed in validation images.

Run: ``python scripts/kd_defaults_search.py [--grid features] [--seeds 0 1 2 3 4] [--epochs 3]``; the last line is JSON.
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
LAYERS = {"pen": ["penultimate"], "pool": ["pool"], "pool+pen": ["pool", "penultimate"]}
# weight 0 is the control: the projection is built (and the global RNG drawn) but the term is off
FEATURE_GRID = [("pen", "cosine", 0.0), ("pen", "mse", 0.01), ("pen", "mse", 0.1)] + [
    (layers, loss, weight) for layers in LAYERS for loss in ("cosine", "standardized") for weight in (0.1, 0.3, 1.0, 3.0, 10.0)
]


def _arms(grid: str, layer_sets: list[str]) -> dict[str, dict]:
    """The distillation arms of a grid, by label: keyword arguments of ``distill``."""
    if grid == "temperature":
        return {f"T={t:g},alpha={a:g}": {"temperature": t, "alpha": a} for t, a in GRID}
    arms: dict[str, dict] = {"T=1,alpha=0.5": {"temperature": 1.0, "alpha": 0.5}}
    for layers, loss, weight in (arm for arm in FEATURE_GRID if arm[0] in layer_sets):
        arms[f"{layers},{loss},w={weight:g}"] = {"temperature": 1.0, "alpha": 0.5, "features": LAYERS[layers],
                                                  "feature_loss": loss, "feature_weight": weight}  # fmt: skip
    return arms


@torch.no_grad()
def _top_probability(model: torch.nn.Module, x, temperature: float) -> float:
    model.eval()
    return float(torch.softmax(model(torch.as_tensor(x)) / temperature, -1).max(-1).values.mean())


def _one_seed(seed: int, epochs: int, grid: str, layer_sets: list[str]) -> dict[str, float]:
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
    for label, kwargs in _arms(grid, layer_sets).items():
        distilled = copy.deepcopy(student)
        torch.manual_seed(seed)
        distill(distilled, dense, make_loader(split.x_train, split.y_train, seed=seed), epochs=epochs, lr=1e-3,
                progress=False, **kwargs)  # fmt: skip
        row[label] = evaluate(distilled, val)
    print(f"seed {seed}: " + json.dumps({k: round(v, 4) for k, v in row.items()}), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--grid", choices=("temperature", "features"), default="temperature")
    parser.add_argument("--layers", nargs="+", choices=list(LAYERS), default=list(LAYERS), help="feature grid: layer sets")
    args = parser.parse_args()
    torch.set_num_threads(1)
    images = len(load_digits(seed=0).y_val)
    rows = [_one_seed(seed, args.epochs, args.grid, args.layers) for seed in args.seeds]
    means = {key: mean(row[key] for row in rows) for key in rows[0]}
    for key, value in means.items():
        if key == "finetune" or key.startswith("teacher"):
            print(f"{key:32} {value:.4f}")
            continue
        per_seed = [round((row[key] - row["finetune"]) * images) for row in rows]
        print(f"{key:32} {value:.4f}  {100 * (value - means['finetune']):+.2f} pt  images per seed {per_seed}")
    print(json.dumps({"search": "kd_defaults", "grid": args.grid, "split": "val", "seeds": args.seeds, "epochs": args.epochs,
                      "means": {k: round(v, 4) for k, v in means.items()}}))  # fmt: skip


if __name__ == "__main__":
    main()
