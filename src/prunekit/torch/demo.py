"""The built-in PyTorch demo: train a CNN on the bundled digits, prune it, fine-tune, measure."""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from prunekit.data import load_digits
from prunekit.errors import ConfigError
from prunekit.torch.metrics import serialized_size, sparsity_report
from prunekit.torch.models import DigitsCNN
from prunekit.torch.training import default_device, evaluate, fit, make_loader
from prunekit.torch.workflows import PruningRun, prune_gradually, prune_iteratively, prune_one_shot

METHODS = ("gradual", "one-shot", "iterative")


def _workflow(method: str, quick: bool) -> Callable[..., PruningRun]:
    if method == "gradual":
        return lambda m, loader, s, **kw: prune_gradually(m, loader, s, epochs=3 if quick else 12, lr=1e-3, **kw)
    if method == "one-shot":
        return lambda m, loader, s, **kw: prune_one_shot(m, loader, s, finetune_epochs=2 if quick else 10, lr=5e-4, **kw)
    if method == "iterative":
        return lambda m, loader, s, **kw: prune_iteratively(
            m, loader, s, rounds=3, epochs_per_round=1 if quick else 4, lr=1e-3, **kw
        )
    raise ConfigError(f"unknown demo method {method!r}; choose from {METHODS}")


def run_torch_demo(
    methods: Sequence[str] = ("gradual",),
    sparsities: Sequence[float] = (0.5, 0.8, 0.9),
    quick: bool = False,
    seed: int = 0,
    device: str | None = None,
    progress: bool = True,
    artifacts_dir: str | Path | None = None,
    export: bool = True,
) -> dict[str, Any]:
    """Train the digits CNN, prune a copy per (method, sparsity) with global magnitude + fine-tuning.

    Returns ``{"framework", "dense": {...}, "runs": [{"method", "sparsity", "accuracy",
    "size_bytes", "gzip_bytes", "seconds"}, ...], "artifacts": {...}}`` measured on the held-out
    test split. With ``export``, the dense model and the sparsest run are exported to ONNX fp32 and
    int8 and to compact files (in ``artifacts_dir``, else a temporary directory), and each artifact
    is measured in ONNX Runtime (:func:`prunekit.torch.compare_artifacts`).

    Example::

        results = run_torch_demo(sparsities=[0.9])
    """
    workflows = {method: _workflow(method, quick) for method in methods}
    torch.manual_seed(seed)
    split = load_digits(seed=seed)
    train = make_loader(split.x_train, split.y_train, batch_size=64, seed=seed)
    test = make_loader(split.x_test, split.y_test, batch_size=256, shuffle=False)
    target = torch.device(device) if device else default_device()

    dense = DigitsCNN().to(target)
    started = time.perf_counter()
    fit(dense, train, epochs=4 if quick else 25, lr=2e-3, progress=progress, description="dense")
    sizes = serialized_size(dense)
    results: dict[str, Any] = {
        "framework": "torch",
        "model": "DigitsCNN",
        "dense": {
            "accuracy": evaluate(dense, test),
            "params": sparsity_report(dense)["total_params"],
            "size_bytes": sizes["raw_bytes"],
            "gzip_bytes": sizes["gzip_bytes"],
            "seconds": time.perf_counter() - started,
        },
        "runs": [],
    }
    sparsest: tuple[float, torch.nn.Module] | None = None
    for method, workflow in workflows.items():
        for sparsity in sparsities:
            torch.manual_seed(seed)
            model = copy.deepcopy(dense)
            started = time.perf_counter()
            run = workflow(model, train, sparsity, scope="global", progress=progress, description=f"{method} {sparsity:.0%}")
            sizes = serialized_size(run.model)
            results["runs"].append(
                {
                    "method": method,
                    "sparsity": sparsity,
                    "achieved_sparsity": run.sparsity,
                    "accuracy": evaluate(run.model, test),
                    "size_bytes": sizes["raw_bytes"],
                    "gzip_bytes": sizes["gzip_bytes"],
                    "seconds": time.perf_counter() - started,
                }
            )
            if sparsest is None or sparsity > sparsest[0]:
                sparsest = (sparsity, run.model)
    if export and sparsest is not None:
        results["artifacts"] = _compare(dense, sparsest[1], split, artifacts_dir)
    return results


def _compare(dense: torch.nn.Module, pruned: torch.nn.Module, split: Any, artifacts_dir: str | Path | None) -> dict[str, Any]:
    from prunekit.torch.compare import compare_artifacts

    with tempfile.TemporaryDirectory() as scratch:
        comparison = compare_artifacts(
            dense.cpu(), pruned.cpu(), (split.x_test, split.y_test), split.x_train[:256],
            artifacts_dir if artifacts_dir is not None else Path(scratch), measure_memory=False, repeats=20,
        )
        return comparison.to_dict()
