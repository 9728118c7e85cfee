"""The built-in demo, for either framework: run it, show the table, write Markdown and JSON."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prunekit._atomic import atomic_write_text
from prunekit.errors import ConfigError
from prunekit.report.tables import ResultTable

FRAMEWORKS = ("torch", "keras")


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 1024:,.0f} KiB"


def results_table(results: dict[str, Any]) -> ResultTable:
    """The demo's table: accuracy and size of the dense model and of every pruned run."""
    dense = results["dense"]
    table = ResultTable(
        f"prunekit demo ({results['framework']}): digits test set",
        ["run", "sparsity", "accuracy", "Δ pt", "raw", "gzip", "gzip ×", "time"],
    )
    table.add_row(
        "dense",
        "0%",
        f"{dense['accuracy']:.2%}",
        "",
        _size(dense["size_bytes"]),
        _size(dense["gzip_bytes"]),
        "1.00",
        f"{dense.get('seconds', 0):.0f} s",
    )
    for run in results["runs"]:
        table.add_row(
            run["method"],
            f"{run['sparsity']:.0%}",
            f"{run['accuracy']:.2%}",
            f"{(run['accuracy'] - dense['accuracy']) * 100:+.2f}",
            _size(run["size_bytes"]),
            _size(run["gzip_bytes"]),
            f"{dense['gzip_bytes'] / run['gzip_bytes']:.2f}",
            f"{run.get('seconds', 0):.0f} s",
        )
    return table


def structured_table(results: dict[str, Any]) -> ResultTable:
    """Params, MACs, latency and accuracy before and after removing channels."""
    dense = results["dense"]
    table = ResultTable(
        "Structured pruning: physically smaller model",
        ["run", "channels cut", "params", "MACs", "b64 ms", "speedup", "accuracy"],
    )
    table.add_row(
        "dense",
        "0%",
        f"{dense['params']:,}",
        f"{dense['macs']:,}",
        f"{dense['latency_ms_b64']:.2f}",
        "1.00",
        f"{dense['accuracy']:.2%}",
    )
    for run in results["runs"]:
        if "macs" in run:
            table.add_row(
                run["method"],
                f"{run['sparsity']:.0%}",
                f"{run['params']:,}",
                f"{run['macs']:,}",
                f"{run['latency_ms_b64']:.2f}",
                f"{dense['latency_ms_b64'] / run['latency_ms_b64']:.2f}",
                f"{run['accuracy']:.2%}",
            )
    return table


def artifacts_table(artifacts: dict[str, Any]) -> ResultTable:
    """The deployable artifacts measured by the demo: size, gzip, accuracy, latency and speedup."""
    big = str(max(artifacts["batch_sizes"]))
    small = str(min(artifacts["batch_sizes"]))
    table = ResultTable(
        "Deployable artifacts (dense and sparsest run)",
        ["artifact", "KiB", "gzip KiB", "×", "acc", f"b{small} ms", f"b{big} ms", f"b{big} ×"],
    )
    for row in artifacts["rows"]:
        latency, speedup = row["latency_ms"], row["speedup"]
        table.add_row(
            row["name"],
            f"{row['size_bytes'] / 1024:,.0f}",
            f"{row['gzip_bytes'] / 1024:,.0f}",
            f"{row['size_ratio']:.1f}",
            "-" if row["accuracy"] is None else f"{row['accuracy']:.1%}",
            f"{latency[small]['median']:.2f}" if small in latency else "-",
            f"{latency[big]['median']:.2f}" if big in latency else "-",
            f"{speedup[big]:.2f}" if speedup.get(big) else "-",
        )
    return table


def _write_report(results: dict[str, Any], output_dir: Path, console: Any) -> None:
    """``report.html`` (self-contained, with plots), ``report.md`` and ``report.json`` beside the results."""
    from rich.console import Console

    console = console or Console()
    if importlib.util.find_spec("matplotlib") is None:
        console.print("report.html skipped: its plots need matplotlib (pip install 'prunekit[report]')")
        return
    from prunekit.report.demo import demo_report

    console.print(f"report: {demo_report(results, output_dir)['html']}")


def run_demo(
    framework: str = "torch",
    methods: Sequence[str] = ("gradual",),
    sparsities: Sequence[float] = (0.5, 0.8, 0.9),
    output_dir: str | Path | None = None,
    quick: bool = False,
    seed: int = 0,
    progress: bool = True,
    export: bool = True,
    console: Any = None,
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
        from prunekit.torch.demo import run_torch_demo

        artifacts_dir = Path(output_dir) / "artifacts" if output_dir is not None else None
        results = run_torch_demo(
            methods, sparsities, quick=quick, seed=seed, progress=progress, artifacts_dir=artifacts_dir, export=export
        )
    else:
        from prunekit._optional import require

        require("keras", "keras")
        from prunekit.keras.demo import run_demo as run_keras_demo

        results = run_keras_demo(output_dir=None, quick=quick, methods=methods, sparsities=sparsities, seed=seed)
    tables = [results_table(results)]
    if any("macs" in run for run in results["runs"]):
        tables.append(structured_table(results))
    if results.get("artifacts"):
        tables.append(artifacts_table(results["artifacts"]))
    for table in tables:
        table.print(console)
    if output_dir is not None:
        output_dir = Path(output_dir)
        atomic_write_text(output_dir / "results.json", json.dumps(results, indent=2) + "\n")
        atomic_write_text(output_dir / "results.md", "\n".join(table.to_markdown() for table in tables))
        _write_report(results, output_dir, console)
    return results
