"""Run a validated :class:`Recipe`: build or load the model, train, prune per sparsity, measure, export, report.

Every step is a public prunekit call: the method runs through the registry
(:func:`prunekit.methods.run_method`), everything else through the recipe's framework backend
(``prunekit.torch.backend`` or ``prunekit.keras.backend``: fit, accuracy, measure, measure_latency,
export, analyze_sensitivity); this module only wires them as the recipe says.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prunekit.core.atomic import atomic_write_text
from prunekit.core.debris import RunOutputs
from prunekit.core.progress import progress as progress_bar
from prunekit.core.records import ModelSummary
from prunekit.core.tables import ResultTable
from prunekit.errors import ConfigError
from prunekit.methods import load_backend, run_method, run_recovery
from prunekit.recipes.config import ModelConfig, Recipe
from prunekit.recipes.preflight import preflight
from prunekit.recipes.validation import to_plain
from prunekit.report.dynamic import plot_turnover
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

    from prunekit.torch.tradeoffs.sensitivity import Accuracy, ChannelPruner, analyze_sensitivity

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
    from prunekit.torch.tradeoffs.structured_allocation import channel_layers, compare_channel_allocations

    batch = torch.zeros(allocate.batch_size, *_model(recipe).input_shape)
    channels = analyze_sensitivity(
        dense,
        Accuracy(split.x_val, split.y_val),
        recipe.report.sensitivity_ratios,
        layers=channel_layers(dense, batch),
        prune=ChannelPruner(batch),
        metric_name="validation accuracy",
    )
    return {
        "channel_sensitivity": channels.to_dict(),
        "allocation": compare_channel_allocations(dense, channels, test, batch, allocate.budget, allocate.target),
    }


def run_recipe(recipe: Recipe, out_dir: str | Path, recipe_text: str | None = None) -> dict[str, Any]:
    """Run ``recipe`` and write ``results.json`` and ``report.{html,md,json}`` (and exports) to ``out_dir``.

    A reused ``out_dir`` is cleaned first of what the previous run wrote there (and of temporary
    files of killed runs); the report is written before ``results.json``, so ``results.json``
    exists only when the whole run finished and always agrees with the report beside it.

    Returns ``{"dense": {...}, "runs": [{"sparsity", "accuracy", "gzip_bytes", ...}], "sensitivity": ...}``.

    Example::

        results = run_recipe(load_recipe("recipe.yaml"), "out")
        results["runs"][0]["accuracy"]
    """
    if recipe.llm is not None:
        from prunekit.recipes.llm_runner import run_llm_recipe

        return run_llm_recipe(recipe, out_dir, recipe_text)
    steps = 1 + len(recipe.prune.sparsities) + bool(recipe.report.sensitivity_ratios)
    with progress_bar(f"run {recipe.name}", steps) as stage:
        return _run_recipe(recipe, out_dir, recipe_text, stage)


def _run_recipe(recipe: Recipe, out_dir: str | Path, recipe_text: str | None, stage: Callable[..., None]) -> dict[str, Any]:
    """The body of :func:`run_recipe`; ``stage(note=...)`` is called after the dense model and each pruning."""
    out = Path(out_dir)
    outputs = RunOutputs(out)
    legacy = [] if outputs.previous() or not (out / "results.json").is_file() else _legacy_outputs(out)
    outputs.start(legacy)
    run_started = time.time_ns() - 2_000_000_000  # file clocks may lag time_ns() a little
    backend = load_backend(recipe.framework)
    split = _load_data(recipe)
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
            **recipe.prune.options(),
        )
        pruned, recovery = pruning.model, None
        if recipe.recover is not None:
            pruned, recovery = _recover(recipe, backend, pruned, dense, split, out / f"pruned-{sparsity:g}")
        row, summaries[f"{sparsity:.0%}"] = _measure(backend, pruned, recipe, split)
        row.update({"method": recipe.prune.method, "target": sparsity, "seconds": time.perf_counter() - started})
        if pruning.history:
            row["history"] = pruning.history
        if recovery is not None:
            row["recover"] = recovery
        if recipe.export.onnx or recipe.export.tflite:
            row["files"] = backend.export(
                pruned, split.x_val, out / f"pruned-{sparsity:g}", int8=recipe.export.int8, calibration=split.x_val[:256]
            )
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
    write_report(recipe_report(recipe, results, summaries, recipe_text), out)
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")  # last: the run is complete
    outputs.finish(p for p in out.iterdir() if p.is_file() and p.stat().st_mtime_ns >= run_started)
    return results


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
    text = recipe_text if recipe_text is not None else _yaml(recipe)
    return Report(f"prunekit run: {recipe.name}", sections, data=results, recipe=text)


def _yaml(recipe: Recipe) -> str:
    import yaml

    return yaml.safe_dump(to_plain(recipe), sort_keys=False)
