"""Sparsity and size of a PyTorch model: per-layer zeros, parameter counts, state_dict bytes raw and gzip."""

from __future__ import annotations

import io
from typing import Any

import torch
from torch import nn

from prunekit.core.gzip import gzip_size
from prunekit.core.records import sparsity_summary


def sparsity_report(model: nn.Module) -> dict[str, Any]:
    """Per-parameter and total sparsity: shapes, element counts, nonzeros and fraction of zeros.

    Example::

        report = sparsity_report(model)
        report["sparsity"], report["layers"]["fc1.weight"]["nonzero"]
    """
    return sparsity_summary(
        (name, tuple(param.shape), int(torch.count_nonzero(param.detach()))) for name, param in model.named_parameters()
    )


def serialized_size(model: nn.Module) -> dict[str, int]:
    """Bytes of the model's ``torch.save``d state_dict, raw and gzip-compressed (as TF MOT reports).

    Zeros left by pruning do not shrink the raw file; they do shrink the gzip one.

    Example::

        serialized_size(model)  # {"raw_bytes": 612345, "gzip_bytes": 101234}
    """
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    raw = buffer.getvalue()
    return {"raw_bytes": len(raw), "gzip_bytes": gzip_size(raw)}


def print_sparsity_table(model_or_report: nn.Module | dict[str, Any], title: str = "Sparsity", console: Any = None) -> None:
    """Print the per-layer sparsity table with rich (a model or a :func:`sparsity_report`)."""
    from rich.console import Console
    from rich.table import Table

    report = sparsity_report(model_or_report) if isinstance(model_or_report, nn.Module) else model_or_report
    table = Table(title=title)
    for column in ("parameter", "shape", "nonzero", "total", "sparsity"):
        table.add_column(column, justify="left" if column in ("parameter", "shape") else "right")
    for name, layer in report["layers"].items():
        table.add_row(
            name, "x".join(map(str, layer["shape"])), f"{layer['nonzero']:,}", f"{layer['numel']:,}", f"{layer['sparsity']:.2%}"
        )
    table.add_row(
        "total", "", f"{report['nonzero_params']:,}", f"{report['total_params']:,}", f"{report['sparsity']:.2%}", style="bold"
    )
    (console or Console()).print(table)
