"""The demo's tables: accuracy and size per run, the structured comparison, the deployable artifacts."""

from __future__ import annotations

from typing import Any

from prunekit.core.tables import ResultTable


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 1024:,.0f} KiB"


def results_table(results: dict[str, Any]) -> ResultTable:
    """The demo's table: accuracy and size of the dense model and of every pruned run."""
    dense = results["dense"]
    recovered = any("recover" in run for run in results["runs"])
    table = ResultTable(
        f"prunekit demo ({results['framework']}): digits test set",
        ["run", "sparsity", *(["before recovery"] if recovered else []), "accuracy", "Δ pt", "raw", "gzip", "gzip ×", "time"],
    )
    table.add_row(
        "dense",
        "0%",
        *([""] if recovered else []),
        f"{dense['accuracy']:.2%}",
        "",
        _size(dense["size_bytes"]),
        _size(dense["gzip_bytes"]),
        "1.00",
        f"{dense.get('seconds', 0):.0f} s",
    )
    for run in results["runs"]:
        before = f"{run['accuracy_before_recovery']:.2%}" if "recover" in run else ""
        table.add_row(
            run["method"] + (f" + {run['recover']}" if "recover" in run else ""),
            f"{run['sparsity']:.0%}",
            *([before] if recovered else []),
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


def demo_tables(results: dict[str, Any]) -> list[ResultTable]:
    """Every table of a demo that ran, dense baseline first: results, structured (if any), artifacts (if any)."""
    tables = [results_table(results)]
    if any("macs" in run for run in results["runs"]):
        tables.append(structured_table(results))
    if results.get("artifacts"):
        tables.append(artifacts_table(results["artifacts"]))
    return tables
