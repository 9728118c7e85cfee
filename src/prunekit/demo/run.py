"""Run the built-in demo for either framework: show the tables, write Markdown, JSON and a report."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prunekit.core.atomic import atomic_write_text
from prunekit.core.progress import progress as progress_bar
from prunekit.core.results import Candidate, artifact_candidates, candidate_name, results_block
from prunekit.demo.tables import demo_tables
from prunekit.errors import ConfigError
from prunekit.methods import FRAMEWORKS
from prunekit.recipes.demo_recipe import demo_recipe_text


def _write_report(results: dict[str, Any], output_dir: Path, console: Any, recipe: str) -> None:
    """``report.html`` (self-contained, with plots), ``report.md`` and ``report.json`` beside the results."""
    from rich.console import Console

    console = console or Console()
    if importlib.util.find_spec("matplotlib") is None:
        console.print("report.html skipped: its plots need matplotlib (pip install 'prunekit[report]')")
        return
    from prunekit.demo.report import demo_report

    console.print(f"report: {demo_report(results, output_dir, recipe=recipe)['html']}")


def _results_schema(results: dict[str, Any]) -> dict[str, Any]:
    """The demo's results in the schema ``prunekit gate`` reads: dense baseline, each run, each pruned artifact."""

    def entry(name: str, row: dict[str, Any]) -> Candidate:
        latency = row.get("latency_ms_b64")
        return Candidate(
            name,
            accuracy=row["accuracy"],
            size_bytes=row["size_bytes"],
            gzip_bytes=row["gzip_bytes"],
            latency_ms=latency,
            latency_batch=None if latency is None else 64,
        )

    baseline = entry("dense", results["dense"])
    candidates = [entry(candidate_name(run["method"], run["sparsity"]), run) for run in results["runs"]]
    if results.get("artifacts"):
        dense_file, files = artifact_candidates(results["artifacts"]["rows"])
        candidates += files
        if baseline.latency_ms is None and dense_file is not None:
            baseline = Candidate(
                **{**baseline.to_dict(), "latency_ms": dense_file.latency_ms, "latency_batch": dense_file.latency_batch}
            )
    return results_block("demo", baseline, candidates)


def run_demo(
    framework: str = "torch",
    methods: Sequence[str] | None = None,
    sparsities: Sequence[float] = (0.5, 0.8, 0.9),
    output_dir: str | Path | None = None,
    quick: bool = False,
    seed: int = 0,
    progress: bool = True,
    export: bool = True,
    console: Any = None,
    recover: str | None = None,
) -> dict[str, Any]:
    """Run the demo, print its tables, and write results and a report to ``output_dir``.

    ``output_dir`` receives ``results.json``, ``results.md`` and ``report.html`` / ``.md`` / ``.json``.

    With ``export`` (PyTorch), the demo ends with the deployable artifacts of the dense model and
    the sparsest run (ONNX fp32/int8, compact files), written to ``output_dir/artifacts``.

    Example::

        results = run_demo(output_dir="demo-out")
        results["runs"][-1]["accuracy"]
    """
    if framework not in FRAMEWORKS:
        raise ConfigError(f"framework should be one of {FRAMEWORKS}, got {framework!r}")
    for sparsity in sparsities:
        if not 0 <= sparsity < 1:
            raise ConfigError(f"demo sparsities should be in [0, 1), got {sparsity}")
    if framework == "torch":
        with progress_bar("loading PyTorch", enabled=progress):  # seconds on a cold or busy machine: say so
            from prunekit.demo.torch_demo import run_torch_demo

        artifacts_dir = Path(output_dir) / "artifacts" if output_dir is not None else None
        results = run_torch_demo(
            methods,
            sparsities,
            quick=quick,
            seed=seed,
            progress=progress,
            artifacts_dir=artifacts_dir,
            export=export,
            recover=recover,
        )
    else:
        from prunekit.core.optional import require

        require("keras", "keras")
        with progress_bar("keras demo", enabled=progress):  # TensorFlow's import alone takes seconds
            from prunekit.demo.keras_demo import run_demo as run_keras_demo

            results = run_keras_demo(
                output_dir=None, quick=quick, methods=methods, sparsities=sparsities, seed=seed, recover=recover
            )
    results.update(_results_schema(results))
    tables = demo_tables(results)
    for table in tables:
        table.print(console)
    if output_dir is not None:
        output_dir = Path(output_dir)
        atomic_write_text(output_dir / "results.json", json.dumps(results, indent=2) + "\n")
        atomic_write_text(output_dir / "results.md", "\n".join(table.to_markdown() for table in tables))
        with progress_bar("report", enabled=progress):
            recipe = "---\n".join(
                demo_recipe_text(framework, method, sparsities, seed=seed, recover=recover, quick=quick)
                for method in dict.fromkeys(run["method"] for run in results["runs"])
            )
            _write_report(results, output_dir, console, recipe)
    return results
