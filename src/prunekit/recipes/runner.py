"""Run a validated :class:`Recipe`: build or load the model, train, prune per sparsity, measure, export, report.

Every step is a public prunekit call: the method runs through the registry
(:func:`prunekit.methods.run_method`), everything else through the recipe's framework backend
(``prunekit.torch.backend`` or ``prunekit.keras.backend``: fit, accuracy, measure, measure_latency,
export, analyze_sensitivity); this module only wires them as the recipe says.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prunekit.core.atomic import atomic_write_text
from prunekit.core.debris import RunOutputs
from prunekit.core.progress import progress as progress_bar
from prunekit.core.records import ModelSummary
from prunekit.core.results import Candidate, candidate_name, parse_results, results_block, smallest_batch_latency
from prunekit.core.tables import ResultTable
from prunekit.errors import ConfigError
from prunekit.methods import get_method, load_backend, run_method, run_recovery
from prunekit.recipes.config import CHECKPOINT_DIR, GateConfig, ModelConfig, Recipe
from prunekit.recipes.preflight import preflight
from prunekit.recipes.validation import to_plain
from prunekit.report.dynamic import plot_turnover
from prunekit.report.gate import GateBounds, GateVerdict, evaluate_gate
from prunekit.report.html import Report, Section, write_report
from prunekit.report.plots import plot_heatmap, plot_layer_bars, plot_pareto
from prunekit.tradeoffs.budget import SensitivityTable
from prunekit.tradeoffs.pareto import pareto_front

_SPLIT_FIELDS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")


def _load_data(recipe: Recipe) -> Any:
    try:
        split = recipe.resolve(recipe.data.loader)(**recipe.data.kwargs)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"data.loader {recipe.data.loader!r} raised {type(exc).__name__}: {exc}") from exc
    missing = [name for name in _SPLIT_FIELDS if not hasattr(split, name)]
    if missing:
        raise ConfigError(
            f"data.loader {recipe.data.loader!r} returned a {type(split).__name__} without {missing}; "
            "return an object with x_train, y_train, x_val, y_val, x_test, y_test (like prunekit.data.load_digits)"
        )
    return split


def _model(recipe: Recipe) -> ModelConfig:
    if recipe.model is None:
        raise ConfigError("the recipe has no model section")
    return recipe.model


def _seed(recipe: Recipe) -> None:
    """Seed the framework's global generator with ``recipe.seed``: the model's initial weights (and
    dropout) are then the same in every run, which a resumed run relies on to end bitwise identical."""
    if recipe.framework == "torch":
        import torch

        torch.manual_seed(recipe.seed)
    else:
        import keras

        keras.utils.set_random_seed(recipe.seed)


def _build_model(recipe: Recipe, backend: Any) -> Any:
    try:
        model = recipe.resolve(_model(recipe).factory)(**_model(recipe).kwargs)
    except Exception as exc:
        raise ConfigError(
            f"model.factory {_model(recipe).factory!r} with kwargs {_model(recipe).kwargs} raised {type(exc).__name__}: {exc}"
        ) from exc
    if not backend.is_model(model):
        raise ConfigError(
            f"model.factory {_model(recipe).factory!r} returned a {type(model).__name__}, not a {recipe.framework} model; "
            "set framework: to the model's framework"
        )
    return model


def check_recipe_model(recipe: Recipe, source: str = "recipe") -> None:
    """Build the recipe's model and check ``input_shape`` and ``prune.exclude`` against it (no training).

    Example::

        check_recipe_model(load_recipe("recipe.yaml"))
    """
    if recipe.model is not None:
        preflight(recipe, _build_model(recipe, load_backend(recipe.framework)), source)


def _measure(backend: Any, model: Any, recipe: Recipe, split: Any) -> tuple[dict[str, Any], ModelSummary]:
    row: dict[str, Any] = {
        "accuracy": backend.accuracy(model, split.x_test, split.y_test),
        **backend.measure(model, split.x_test),
    }
    if recipe.report.latency_batch_sizes:
        timings = backend.measure_latency(
            model, _model(recipe).input_shape, recipe.report.latency_batch_sizes, warmup=3, repeats=15
        )
        row["latency"] = [t.to_dict() for t in timings]
    return row, backend.summarize(model, split.x_test)


def _recover(recipe: Recipe, backend: Any, pruned: Any, dense: Any, split: Any, stem: Path) -> tuple[Any, dict[str, Any]]:
    """Run the recipe's recovery on a pruned model; the recovered model and what the report shows of it."""
    if recipe.recover is None:
        raise ConfigError("the recipe has no recover section")
    before = backend.accuracy(pruned, split.x_test, split.y_test)
    suffix = ".onnx" if recipe.framework == "torch" else ".tflite"
    run = run_recovery(
        recipe.recover.method,
        recipe.framework,
        pruned,
        split.x_train,
        split.y_train,
        teacher=dense,
        export_path=str(stem.with_name(f"{stem.name}.{recipe.recover.method}.int8{suffix}")),
        calibration=split.x_val[:256],
        seed=recipe.seed,
        batch_size=recipe.data.batch_size,
        **recipe.recover.overrides(),
    )
    return run.model, {
        "method": recipe.recover.method,
        "accuracy_before": before,
        "artifact": None if run.artifact is None else str(run.artifact),
    }


def _allocate(recipe: Recipe, dense: Any, split: Any, table: SensitivityTable) -> dict[str, Any]:
    """The allocation comparison (and, when channels are removed, the channel sensitivity it is based on)."""
    import torch

    from prunekit.torch.tradeoffs.sensitivity import Accuracy, analyze_sensitivity

    allocate, test = recipe.allocate, Accuracy(split.x_test, split.y_test)
    if allocate is None:
        raise ConfigError("the recipe has no allocate section")
    if allocate.pruning == "weights":
        from prunekit.torch.tradeoffs.allocation import compare_allocations

        return {
            "allocation": compare_allocations(
                dense,
                table,
                test,
                torch.zeros(1, *_model(recipe).input_shape),
                allocate.budget,
                allocate.target,
                search_metric=Accuracy(split.x_val, split.y_val),
            )
        }
    from prunekit.torch.tradeoffs.structured_allocation import compare_channel_allocations

    batch = torch.zeros(allocate.batch_size, *_model(recipe).input_shape)
    channels = analyze_sensitivity(
        dense,
        Accuracy(split.x_val, split.y_val),
        recipe.report.sensitivity_ratios,
        method=allocate.pruning,  # the registered channel-removal method's layer pruner
        example_inputs=batch,
        metric_name="validation accuracy",
    )
    return {
        "channel_sensitivity": channels.to_dict(),
        "allocation": compare_channel_allocations(dense, channels, test, batch, allocate.budget, allocate.target),
    }


def run_recipe(
    recipe: Recipe, out_dir: str | Path, recipe_text: str | None = None, *, resume: bool = False, checkpoint_every: int = 1
) -> dict[str, Any]:
    """Run ``recipe`` and write ``results.json`` and ``report.{html,md,json}`` (and exports) to ``out_dir``.

    A reused ``out_dir`` is cleaned first of what the previous run wrote there (and of temporary
    files of killed runs); the report is written before ``results.json``, so ``results.json``
    exists only when the whole run finished and always agrees with the report beside it.

    Each pruning run (PyTorch) checkpoints atomically every ``checkpoint_every`` epochs into
    ``out_dir/.checkpoints`` (model, optimizer, masks and schedule step, RNG and data order);
    after a kill, ``resume=True`` continues every run from its checkpoint (finished ones are not
    trained again) and the final models are bitwise those of an uninterrupted run on CPU. The
    dense training, when the recipe has one, runs again (it is seeded). A checkpoint of another
    recipe is refused naming the file and what differs; the folder is removed when the run ends.

    Returns ``{"dense": {...}, "runs": [{"sparsity", "accuracy", "gzip_bytes", ...}], "sensitivity": ...}``.

    Example::

        results = run_recipe(load_recipe("recipe.yaml"), "out")
        results["runs"][0]["accuracy"]
    """
    if recipe.llm is not None:
        from prunekit.recipes.llm_runner import run_llm_recipe

        return run_llm_recipe(recipe, out_dir, recipe_text, resume=resume, checkpoint_every=checkpoint_every)
    steps = 1 + len(recipe.prune.sparsities) + bool(recipe.report.sensitivity_ratios)
    with progress_bar(f"run {recipe.name}", steps) as stage:
        return _run_recipe(recipe, out_dir, recipe_text, stage, resume, checkpoint_every)


def _run_recipe(
    recipe: Recipe,
    out_dir: str | Path,
    recipe_text: str | None,
    stage: Callable[..., None],
    resume: bool,
    checkpoint_every: int,
) -> dict[str, Any]:
    """The body of :func:`run_recipe`; ``stage(note=...)`` is called after the dense model and each pruning."""
    out = Path(out_dir)
    checkpoints = _checkpoints(recipe, out, resume, checkpoint_every)
    outputs = RunOutputs(out)
    legacy = [] if outputs.previous() or not (out / "results.json").is_file() else _legacy_outputs(out)
    outputs.start(legacy)
    run_started = time.time_ns() - 2_000_000_000  # file clocks may lag time_ns() a little
    backend = load_backend(recipe.framework)
    split = _load_data(recipe)
    _seed(recipe)
    dense = _build_model(recipe, backend)
    preflight(recipe, dense)
    started = time.perf_counter()
    if _model(recipe).weights:
        dense = backend.load_weights(_model(recipe).weights, lambda: _build_model(recipe, backend))
    elif recipe.train.epochs:
        backend.fit(
            dense,
            split.x_train,
            split.y_train,
            epochs=recipe.train.epochs,
            lr=recipe.train.lr,
            batch_size=recipe.data.batch_size,
            seed=recipe.seed,
        )
    dense_row, dense_summary = _measure(backend, dense, recipe, split)
    dense_row["seconds"] = time.perf_counter() - started
    stage(note="dense measured")
    results: dict[str, Any] = {"recipe": recipe.name, "framework": recipe.framework, "dense": dense_row, "runs": []}
    summaries = {"dense": dense_summary}
    for sparsity in recipe.prune.sparsities:
        started = time.perf_counter()
        pruning = run_method(
            recipe.prune.method,
            recipe.framework,
            backend.clone(dense),
            split.x_train,
            split.y_train,
            sparsity,
            seed=recipe.seed,
            batch_size=recipe.data.batch_size,
            checkpoint=checkpoints(sparsity),
            **recipe.prune.options(),
        )
        pruned, recovery = pruning.model, None
        if recipe.recover is not None:
            pruned, recovery = _recover(recipe, backend, pruned, dense, split, out / f"pruned-{sparsity:g}")
        row, summaries[f"{sparsity:.0%}"] = _measure(backend, pruned, recipe, split)
        if recipe.report.latency_batch_sizes:  # what the sparse CPU kernels would make of the zeros (torch)
            sparse = backend.measure_sparse_runtime(pruned, split.x_test, recipe.report.latency_batch_sizes[0])
            if sparse is not None:
                row["sparse_runtime"] = sparse
        row.update({"method": recipe.prune.method, "target": sparsity, "seconds": time.perf_counter() - started})
        if pruning.history:
            row["history"] = pruning.history
        if recovery is not None:
            row["recover"] = recovery
        if recipe.export.onnx or recipe.export.tflite:
            row["files"] = backend.export(
                pruned, split.x_val, out / f"pruned-{sparsity:g}", int8=recipe.export.int8, calibration=split.x_val[:256]
            )
            row["profiles"] = _profile_exports(row["files"], split)
        results["runs"].append(row)
        stage(note=f"{recipe.prune.method} at {sparsity:.0%}")
    if recipe.report.sensitivity_ratios:
        table = backend.analyze_sensitivity(
            dense, backend.Accuracy(split.x_val, split.y_val), recipe.report.sensitivity_ratios, metric_name="validation accuracy"
        )
        results["sensitivity"] = table.to_dict()
        if recipe.allocate is not None:
            results.update(_allocate(recipe, dense, split, table))
        stage(note="sensitivity")
    results.update(_results_schema(results))
    if recipe.gate is not None:
        verdict = _gate(recipe.gate, results, str(out / "results.json"))
        results["gate"] = verdict.to_dict()
        verdict.write_junit(out / "gate.xml")
    write_report(recipe_report(recipe, results, summaries, recipe_text), out)
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")  # last: the run is complete
    outputs.finish(p for p in out.iterdir() if p.is_file() and p.stat().st_mtime_ns >= run_started)
    shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)  # the run is complete: nothing to resume
    return results


def _checkpoints(recipe: Recipe, out: Path, resume: bool, every: int) -> Callable[[float], Any]:
    """Per sparsity, the checkpoint of its pruning run (None where the framework cannot checkpoint)."""
    folder = out / CHECKPOINT_DIR
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise ConfigError(f"checkpoint_every (--checkpoint-every) should be an integer >= 1 (epochs), got {every!r}")
    method = get_method(recipe.prune.method)
    if recipe.framework == "keras" and method.kind != "unstructured":
        if resume:
            raise ConfigError(
                f"--resume of a keras recipe needs a method of kind 'unstructured' (prunekit methods --kind unstructured "
                f"--framework keras); {method.name!r} is {method.kind!r} and runs from the start"
            )
        return lambda sparsity: None
    if not resume and folder.is_dir() and any(folder.iterdir()):
        raise ConfigError(
            f"{folder} holds checkpoints of an interrupted run: pass --resume to continue it, or delete the folder to start over"
        )
    if recipe.framework == "keras":
        from prunekit.keras.checkpoint import EpochCheckpoint
    else:
        from prunekit.torch.checkpoint import EpochCheckpoint  # type: ignore[assignment]

    digest = hashlib.sha256(json.dumps(to_plain(recipe), sort_keys=True, default=str).encode()).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    return lambda sparsity: EpochCheckpoint(
        folder / f"prune-{sparsity:g}.ckpt", every=every, resume=resume, key={"recipe": digest, "sparsity": sparsity}, keep=True
    )


def _profile_exports(files: dict[str, str], split: Any) -> dict[str, str]:
    """Write the reference profile (validation data; for drift monitoring in ``prunekit serve``) beside each export."""
    from prunekit.artifacts.profile import profile_path_for
    from prunekit.serve.profiling import profile_artifact

    profiles = {}
    for kind, file in files.items():
        profile_artifact(file, split.x_val, split.y_val)  # a full-integer TFLite file gets the data quantized
        profiles[kind] = str(profile_path_for(file))
    return profiles


def _results_schema(results: dict[str, Any]) -> dict[str, Any]:
    """The run's results in the schema ``prunekit gate`` reads: the dense model and each pruned run."""

    def entry(name: str, row: dict[str, Any]) -> Candidate:
        median, batch = smallest_batch_latency(row.get("latency"))
        return Candidate(
            name,
            accuracy=row["accuracy"],
            size_bytes=row.get("raw_bytes"),
            gzip_bytes=row.get("gzip_bytes"),
            latency_ms=median,
            latency_batch=batch,
        )

    runs = [entry(candidate_name(row["method"], row["target"]), row) for row in results["runs"]]
    return results_block("run", entry("dense", results["dense"]), runs)


def _gate(gate: GateConfig, results: dict[str, Any], where: str) -> GateVerdict:
    """The recipe's ``gate:`` bounds checked on this run's results (validated with the recipe)."""
    bounds = GateBounds(gate.max_accuracy_drop, gate.min_compression, gate.max_latency_ms)
    return evaluate_gate(parse_results(results, where), bounds, candidate=gate.candidate, require=gate.require)


def _legacy_outputs(out: Path) -> list[str]:
    """What a run written before output manifests existed left in ``out``: results, report and exports."""
    names = ["results.json", "report.html", "report.md", "report.json"]
    return names + sorted(p.name for p in out.glob("pruned-*") if p.is_file())


def recipe_report(
    recipe: Recipe, results: dict[str, Any], summaries: dict[str, ModelSummary], recipe_text: str | None = None
) -> Report:
    """The report of a recipe run: before/after table, per-layer charts, Pareto plot, sensitivity, recipe.

    Example::

        write_report(recipe_report(recipe, results, summaries), "out")
    """
    dense = results["dense"]
    recovered = any("recover" in run for run in results["runs"])
    table = ResultTable(
        f"{recipe.name}: before and after (test set)",
        [
            "model",
            *(["before recovery"] if recovered else []),
            "accuracy",
            "Δ pt",
            "nonzeros",
            "sparse MACs",
            "gzip bytes",
            "latency ms (batch)",
        ],
    )

    def latency(row: dict[str, Any]) -> str:
        return ", ".join(f"{t['median_ms']:.2f} ({t['device']} {t['batch_size']})" for t in row.get("latency", []))

    table.add_row(
        "dense",
        *([""] if recovered else []),
        f"{dense['accuracy']:.2%}",
        "",
        f"{dense['nonzeros']:,}",
        f"{dense['sparse_macs']:,}",
        f"{dense['gzip_bytes']:,}",
        latency(dense),
    )
    for run in results["runs"]:
        recovery = run.get("recover")
        table.add_row(
            f"{run['method']} {run['target']:.0%}" + (f" + {recovery['method']}" if recovery else ""),
            *([f"{recovery['accuracy_before']:.2%}" if recovery else ""] if recovered else []),
            f"{run['accuracy']:.2%}",
            f"{(run['accuracy'] - dense['accuracy']) * 100:+.2f}",
            f"{run['nonzeros']:,}",
            f"{run['sparse_macs']:,}",
            f"{run['gzip_bytes']:,}",
            latency(run),
        )
    names = {label: {layer.name: layer for layer in summary.layers} for label, summary in summaries.items()}
    # layers that compute (MACs) or were pruned; BatchNorm and other zero-MAC, unpruned layers only clutter the charts
    shared = [
        layer.name
        for layer in summaries["dense"].layers
        if all(layer.name in known for known in names.values())
        and (layer.macs or any(known[layer.name].sparsity > 0 for known in names.values()))
    ]

    def per_layer(attribute: str) -> dict[str, list[float]]:
        return {label: [getattr(s.layer(name), attribute) for name in shared] for label, s in summaries.items()}

    figures = [
        plot_layer_bars(shared, per_layer("sparsity"), ylabel="sparsity", title="Per-layer sparsity"),
        plot_layer_bars(shared, per_layer("sparse_macs"), ylabel="sparse MACs per sample", title="Per-layer MACs"),
    ]
    rows = [dict(dense, method="dense")] + results["runs"]
    figures.append(
        plot_pareto(rows, "gzip_bytes", front=pareto_front(rows, "accuracy", "gzip_bytes"), title="accuracy vs size (gzip)")
    )
    sections = [Section("Before and after", tables=[table]), Section("Per layer and trade-off", figures=figures)]
    turnover = [
        plot_turnover(
            [{**record, "epoch": i + 1} for i, record in enumerate(run["history"])],
            x_key="epoch",
            title=f"Mask turnover, {run['method']} {run['target']:.0%}",
        )
        for run in results["runs"]
        if run.get("history") and "turnover" in run["history"][0]
    ]
    if turnover:
        sections.append(
            Section(
                "Dynamic sparsity",
                text="Share of the first mask that changed, and connections regrown, per epoch of training.",
                figures=turnover,
            )
        )
    for key, how in (("sensitivity", "weights zeroed by magnitude"), ("channel_sensitivity", "channels removed (L1)")):
        if key in results:
            data = results[key]
            sections.append(
                Section(
                    f"Sensitivity: {how}",
                    text=f"Validation accuracy with one layer pruned at a time ({how}).",
                    figures=[
                        plot_heatmap(
                            list(data["scores"]),
                            data["ratios"],
                            list(data["scores"].values()),
                            title=f"Sensitivity, {how} (validation accuracy)",
                            label="accuracy",
                        )
                    ],
                )
            )
    if "allocation" in results:
        from prunekit.torch.tradeoffs.allocation import allocation_table

        methods = (
            "sensitivity (greedy), uniform, global magnitude and the best blend of greedy and global on validation (search)"
            if recipe.allocate is not None and recipe.allocate.pruning == "weights"
            else "sensitivity (greedy, measured), uniform and global channel ratios, channels removed"
        )
        sections.append(
            Section(
                "Allocation at the same budget",
                tables=[allocation_table(results["allocation"], f"Per-layer ratios: {methods}; test accuracy, no fine-tuning")],
            )
        )
    sparse_runs = [run for run in results["runs"] if run.get("sparse_runtime")]
    if sparse_runs:
        sections.append(Section("Sparse CPU runtime", tables=[_sparse_runtime_table(sparse_runs)]))
    if "gate" in results:
        verdict = GateVerdict.from_dict(results["gate"])
        sections.append(Section("Gate", text=verdict.summary(), tables=[verdict.table()]))
    text = recipe_text if recipe_text is not None else _yaml(recipe)
    return Report(f"prunekit run: {recipe.name}", sections, data=results, recipe=text)


def _sparse_runtime_table(runs: list[dict[str, Any]]) -> ResultTable:
    """Dense vs sparse-kernel latency of each pruned model (``prunekit.torch.sparsify``'s measured per-layer choice)."""
    table = ResultTable(
        "Latency with the sparse CPU kernels (each layer runs sparse only where measured faster)",
        ["model", "batch", "dense ms", "sparse ms", "speedup", "layers sparse", "kernels"],
    )
    for run in runs:
        sparse = run["sparse_runtime"]
        chosen = sum(bool(layer["sparse"]) for layer in sparse["layers"])
        speedup = sparse["speedup"]
        table.add_row(
            f"{run['method']} {run['target']:.0%}",
            sparse["batch_size"],
            f"{sparse['dense_ms']:.3f}",
            f"{sparse['sparse_ms']:.3f}",
            "" if speedup is None else f"{speedup:.2f}x",
            f"{chosen} of {len(sparse['layers'])}",
            sparse["kernel_backend"],
        )
    return table


def _yaml(recipe: Recipe) -> str:
    import yaml

    return yaml.safe_dump(to_plain(recipe), sort_keys=False)
