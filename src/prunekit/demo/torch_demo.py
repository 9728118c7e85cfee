"""The built-in PyTorch demo: train a CNN on the bundled digits, prune it, fine-tune, measure."""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from prunekit.core.progress import progress as progress_bar
from prunekit.data import load_digits
from prunekit.methods import PruningRun, default_method, get_method, run_method, run_recovery
from prunekit.torch.measure.metrics import serialized_size, sparsity_report
from prunekit.torch.models import DigitsCNN
from prunekit.torch.training import default_device, evaluate, fit, make_loader


def _cost(model: torch.nn.Module) -> dict[str, float]:
    """Parameters and MACs per image, for the structured comparison."""
    from prunekit.torch.measure.macs import count_macs, count_params

    device = next(model.parameters()).device
    return {"params": count_params(model), "macs": count_macs(model, torch.zeros(1, 1, 8, 8, device=device)).total}


def _latencies_b64(models: Sequence[torch.nn.Module], rounds: int = 7) -> list[float]:
    """CPU latency at batch 64 of each model, timed in alternating rounds (min of per-round medians)."""
    from prunekit.torch.measure.latency import measure_latency

    best = [float("inf")] * len(models)
    for round_index in range(rounds):
        order = range(len(models)) if round_index % 2 == 0 else reversed(range(len(models)))
        for i in order:
            device = next(models[i].parameters()).device
            result = measure_latency(models[i], (1, 8, 8), batch_sizes=(64,), devices=["cpu"], warmup=3, repeats=10)[0]
            models[i].to(device)
            best[i] = min(best[i], result.median_ms)
    return best


def run_torch_demo(
    methods: Sequence[str] | None = None,
    sparsities: Sequence[float] = (0.5, 0.8, 0.9),
    quick: bool = False,
    seed: int = 0,
    device: str | None = None,
    progress: bool = True,
    artifacts_dir: str | Path | None = None,
    export: bool = True,
    recover: str | None = None,
) -> dict[str, Any]:
    """Train the digits CNN, prune a copy per (method, sparsity) with global magnitude + fine-tuning.

    With ``recover`` (a ``recover`` method: ``finetune``, ``distill`` from the dense model, ``qat``,
    ``pqat``), each pruned model is recovered after pruning; its run records ``recover`` and
    ``accuracy_before_recovery``.

    Returns ``{"framework", "dense": {...}, "runs": [{"method", "sparsity", "accuracy",
    "size_bytes", "gzip_bytes", "seconds"}, ...], "artifacts": {...}}`` measured on the held-out
    test split. With ``export``, the dense model and the sparsest run are exported to ONNX fp32 and
    int8 and to compact files (in ``artifacts_dir``, else a temporary directory), and each artifact
    is measured in ONNX Runtime (:func:`prunekit.torch.deploy.compare_artifacts`).

    Example::

        results = run_torch_demo(sparsities=[0.9])
    """
    methods = list(methods) if methods else [default_method(framework="torch").name]
    kinds = {method: get_method(method, framework="torch").kind for method in methods}  # unknown names fail here
    if recover is not None:
        get_method(recover, kind="recover", framework="torch")
    torch.manual_seed(seed)
    split = load_digits(seed=seed)
    train = make_loader(split.x_train, split.y_train, batch_size=64, seed=seed)
    test = make_loader(split.x_test, split.y_test, batch_size=256, shuffle=False)
    target = torch.device(device) if device else default_device()

    steps = 1 + len(kinds) * len(sparsities) + ("structured" in kinds.values()) + bool(export)
    with progress_bar("demo", steps, enabled=progress) as stage:
        return _run(kinds, sparsities, split, train, test, target, quick, seed, progress, artifacts_dir, export, recover, stage)


def _run(
    kinds: dict[str, str],
    sparsities: Sequence[float],
    split: Any,
    train: Any,
    test: Any,
    target: torch.device,
    quick: bool,
    seed: int,
    progress: bool,
    artifacts_dir: str | Path | None,
    export: bool,
    recover: str | None,
    stage: Callable[..., None],
) -> dict[str, Any]:
    """The demo's stages (see :func:`run_torch_demo`); ``stage(note=...)`` is called after each."""
    quick_options: dict[str, Any] = {"epochs": 3} if quick else {}  # a smoke test's fine-tuning budget
    dense = DigitsCNN().to(target)
    started = time.perf_counter()
    fit(dense, train, epochs=4 if quick else 25, lr=2e-3, progress=progress, description="dense")
    stage(note="dense trained")
    sizes = serialized_size(dense)
    structured = "structured" in kinds.values()
    results: dict[str, Any] = {
        "framework": "torch",
        "model": "DigitsCNN",
        "dense": {
            "accuracy": evaluate(dense, test),
            "params": sparsity_report(dense)["total_params"],
            "size_bytes": sizes["raw_bytes"],
            "gzip_bytes": sizes["gzip_bytes"],
            "seconds": time.perf_counter() - started,
            **(_cost(dense) if structured else {}),
        },
        "runs": [],
    }
    sparsest: tuple[float, PruningRun] | None = None
    smaller: list[tuple[dict[str, Any], torch.nn.Module]] = []  # structured runs, timed against dense at the end
    for method, kind in kinds.items():
        for sparsity in sparsities:
            torch.manual_seed(seed)
            model = copy.deepcopy(dense)
            started = time.perf_counter()
            run = run_method(
                method,
                "torch",
                model,
                split.x_train,
                split.y_train,
                sparsity,
                seed=seed,
                progress=progress,
                device=str(target),
                **quick_options,
            )
            recovered: dict[str, Any] = {}
            if recover is not None:
                before = evaluate(run.model, test)
                run.model = run_recovery(
                    recover,
                    "torch",
                    run.model,
                    split.x_train,
                    split.y_train,
                    teacher=dense,
                    seed=seed,
                    progress=progress,
                    device=str(target),
                    **quick_options,
                ).model
                recovered = {"recover": recover, "accuracy_before_recovery": before}
            sizes = serialized_size(run.model)
            results["runs"].append(
                {
                    **(_cost(run.model) if kind == "structured" else {}),
                    "method": method,
                    "sparsity": sparsity,
                    "achieved_sparsity": run.sparsity,
                    "accuracy": evaluate(run.model, test),
                    "size_bytes": sizes["raw_bytes"],
                    "gzip_bytes": sizes["gzip_bytes"],
                    "seconds": time.perf_counter() - started,
                    **recovered,
                }
            )
            stage(note=f"{method} at {sparsity:.0%}")
            if kind == "structured":
                smaller.append((results["runs"][-1], run.model))
            if sparsest is None or sparsity > sparsest[0]:
                sparsest = (sparsity, run)
    if smaller:
        latencies = _latencies_b64([dense, *(model for _, model in smaller)])
        for record, latency in zip([results["dense"], *(record for record, _ in smaller)], latencies):
            record["latency_ms_b64"] = latency
        stage(note="latency timed")
    if export and sparsest is not None:
        results["artifacts"] = _compare(dense, sparsest[1], split, artifacts_dir)
        stage(note="artifacts measured")
    return results


def _compare(dense: torch.nn.Module, pruned: PruningRun, split: Any, artifacts_dir: str | Path | None) -> dict[str, Any]:
    from prunekit.torch.deploy.compare import compare_artifacts

    with tempfile.TemporaryDirectory() as scratch:
        comparison = compare_artifacts(
            dense.cpu(),
            pruned.model.cpu(),
            (split.x_test, split.y_test),
            split.x_train[:256],
            artifacts_dir if artifacts_dir is not None else Path(scratch),
            measure_memory=False,
            repeats=20,
            plan=pruned.plan,
        )
        return comparison.to_dict()
