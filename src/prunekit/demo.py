"""The built-in demo, for either framework: run it, show the table, write Markdown and JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from prunekit.errors import ConfigError
from prunekit.report.tables import ResultTable, write_text_atomic

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
    table.add_row("dense", "0%", f"{dense['accuracy']:.2%}", "", _size(dense["size_bytes"]), _size(dense["gzip_bytes"]),
                  "1.00", f"{dense.get('seconds', 0):.0f} s")
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


def run_demo(
    framework: str = "torch",
    methods: Sequence[str] = ("gradual",),
    sparsities: Sequence[float] = (0.5, 0.8, 0.9),
    output_dir: str | Path | None = None,
    quick: bool = False,
    seed: int = 0,
    progress: bool = True,
    console: Any = None,
) -> dict[str, Any]:
    """Run the demo, print its table, and write ``results.md`` and ``results.json`` to ``output_dir``.

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

        results = run_torch_demo(methods, sparsities, quick=quick, seed=seed, progress=progress)
    else:
        from prunekit._optional import require

        require("keras", "keras")
        from prunekit.keras.demo import run_demo as run_keras_demo

        results = run_keras_demo(output_dir=None, quick=quick)
    table = results_table(results)
    table.print(console)
    if output_dir is not None:
        output_dir = Path(output_dir)
        write_text_atomic(output_dir / "results.json", json.dumps(results, indent=2) + "\n")
        write_text_atomic(output_dir / "results.md", table.to_markdown())
    return results
