"""One call from a dense and a pruned model to every deployable artifact and a comparison table.

``compare_artifacts`` writes dense fp32 / pruned fp32 / pruned int8 dynamic / pruned int8 static
ONNX files plus plain and compact weight files, measures each artifact itself (ONNX Runtime
accuracy and interleaved latency; the weight files are loaded back into the model and
evaluated in PyTorch), and returns a :class:`Comparison` that prints as a rich table.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit.artifacts.onnx_artifact import LatencyStats, file_sizes, onnx_accuracy, peak_memory, time_onnx_files
from prunekit.artifacts.ort import Samples, as_samples, batch_of, rows, sample_count
from prunekit.artifacts.quantize import quantize_onnx
from prunekit.core.atomic import atomic_write_bytes
from prunekit.core.debris import remove_stale_temps
from prunekit.core.results import artifact_candidates, results_block
from prunekit.errors import ConfigError
from prunekit.torch.deploy.compact import load_compressed, save_compressed
from prunekit.torch.deploy.export import export_onnx
from prunekit.torch.structured.tracing import call_model


@dataclass(frozen=True)
class ArtifactRow:
    """One artifact in the table: ``kind`` is ``"onnx"`` (timed in ORT) or ``"weights"`` (a weight file)."""

    name: str
    kind: str
    path: Path
    size_bytes: int
    gzip_bytes: int
    accuracy: float | None
    latency: dict[int, LatencyStats] = field(default_factory=dict)
    peak_memory_bytes: int | None = None
    max_abs_error: float | None = None


@dataclass(frozen=True)
class Comparison:
    """The measured artifacts. Sizes are compared with the dense file of the same kind; speedups with
    the first ONNX row (dense fp32, or pruned fp32 when no dense model was given).

    Example::

        comparison = compare_artifacts(dense, pruned, (x_test, y_test), x_val, "artifacts")
        comparison.print()
        comparison.speedup("pruned int8 static", 64)
    """

    rows: tuple[ArtifactRow, ...]
    batch_sizes: tuple[int, ...]
    threads: int | None
    torch_accuracy: dict[str, float]

    def row(self, name: str) -> ArtifactRow:
        for row in self.rows:
            if row.name == name:
                return row
        raise ConfigError(f"no artifact named {name!r}; the rows are {[r.name for r in self.rows]}")

    def _reference(self, kind: str) -> ArtifactRow:
        return next(row for row in self.rows if row.kind == kind)

    def size_ratio(self, name: str) -> float:
        """How many times smaller than the (dense, when given) artifact of the same kind."""
        row = self.row(name)
        return self._reference(row.kind).size_bytes / row.size_bytes

    def speedup(self, name: str, batch_size: int) -> float | None:
        """Median latency of the baseline ONNX row divided by this row's, at ``batch_size``."""
        row = self.row(name)
        if batch_size not in row.latency:
            return None
        return self._reference("onnx").latency[batch_size].median_ms / row.latency[batch_size].median_ms

    def to_dict(self) -> dict[str, Any]:
        rows = []
        for row in self.rows:
            rows.append(
                {
                    "name": row.name,
                    "kind": row.kind,
                    "path": str(row.path),
                    "size_bytes": row.size_bytes,
                    "gzip_bytes": row.gzip_bytes,
                    "size_ratio": self.size_ratio(row.name),
                    "accuracy": row.accuracy,
                    "latency_ms": {
                        str(b): {"median": s.median_ms, "p90": s.p90_ms, "runs": s.runs} for b, s in row.latency.items()
                    },
                    "speedup": {str(b): self.speedup(row.name, b) for b in row.latency},
                    "peak_memory_bytes": row.peak_memory_bytes,
                    "max_abs_error": row.max_abs_error,
                }
            )
        return {
            "rows": rows,
            "batch_sizes": list(self.batch_sizes),
            "threads": self.threads,
            "torch_accuracy": self.torch_accuracy,
            **results_block("export", *artifact_candidates(rows)),  # what `prunekit gate` reads
        }

    def table(self, title: str = "Deployable artifacts") -> Any:
        """A ``rich.table.Table``: sizes in KiB, latency medians in ms, speedup at the largest batch."""
        from rich import box
        from rich.table import Table

        big = max(self.batch_sizes)
        table = Table(title=title, caption=self._caption(), box=box.SIMPLE_HEAD, padding=0, collapse_padding=True, pad_edge=False)
        columns = (
            "artifact",
            "size KiB",
            "gzip KiB",
            "smaller",
            "accuracy",
            *(f"b{b} ms" for b in self.batch_sizes),
            f"speedup b{big}",
        )
        for column in columns:
            table.add_column(column, justify="left" if column == "artifact" else "right", no_wrap=column == "artifact")
        for row in self.rows:
            speed = self.speedup(row.name, big)
            table.add_row(
                row.name,
                f"{row.size_bytes / 1024:,.1f}",
                f"{row.gzip_bytes / 1024:,.1f}",
                f"{self.size_ratio(row.name):.1f}x",
                "-" if row.accuracy is None else f"{row.accuracy:.2%}",
                *(f"{row.latency[b].median_ms:.2f}" if b in row.latency else "-" for b in self.batch_sizes),
                "-" if speed is None else f"{speed:.2f}x",
            )
        return table

    def _caption(self) -> str:
        checks = ", ".join(f"{r.name} {r.max_abs_error:.1e}" for r in self.rows if r.max_abs_error is not None)
        torch_acc = ", ".join(f"{name} {acc:.2%}" for name, acc in self.torch_accuracy.items())
        threads = "ORT default" if self.threads is None else str(self.threads)
        memory = ", ".join(f"{r.name} {r.peak_memory_bytes / 2**20:.1f}" for r in self.rows if r.peak_memory_bytes is not None)
        return (
            f"PyTorch accuracy: {torch_acc}. ONNX Runtime vs PyTorch max abs error: {checks}. "
            f"Latency: ONNX Runtime CPU, {threads} thread(s), interleaved, median of {self._runs()} runs. "
            + (f"Peak memory added by loading and running (MiB): {memory}. " if memory else "")
            + "'smaller': vs the dense file of the same kind. Weight files are evaluated after loading "
            "them back into PyTorch."
        )

    def _runs(self) -> int:
        return next((s.runs for r in self.rows for s in r.latency.values()), 0)

    def print(self, console: Any = None, title: str = "Deployable artifacts") -> None:
        """Print the table with rich."""
        from rich.console import Console

        (console or Console()).print(self.table(title))


def _torch_batch(samples: Samples, device: torch.device) -> Any:
    if isinstance(samples, dict):
        return {name: torch.as_tensor(array).to(device) for name, array in samples.items()}
    if isinstance(samples, tuple):
        return tuple(torch.as_tensor(array).to(device) for array in samples)
    return torch.as_tensor(samples).to(device)


def _first_output(model: nn.Module, batch: Any) -> torch.Tensor:
    """The model's first output on a batch (keyword inputs for a dict, positional for a tuple)."""
    out = call_model(model, batch)
    if isinstance(out, Mapping):
        return next(iter(out.values()))
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def torch_accuracy(model: nn.Module, x: Any, y: Any, batch_size: int = 256) -> float:
    """Top-1 accuracy of a PyTorch classifier on ``(x, y)``, in eval mode (the mode is restored).

    ``x`` is an array, or for several inputs a dict of arrays (keyword arguments, as
    transformers models take them) or a tuple (positional); the first output (``logits`` of a
    ``ModelOutput``) is the class scores.

    Example::

        torch_accuracy(model, split.x_test, split.y_test)  # 0.9778
        torch_accuracy(bert, {"input_ids": ids, "attention_mask": mask}, labels)
    """
    x, y = as_samples(x), torch.as_tensor(np.asarray(y))
    count = sample_count(x, "test data")
    was_training = model.training
    model.eval()
    try:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        correct = sum(
            int(
                (
                    _first_output(model, _torch_batch(rows(x, i, i + batch_size), device)).argmax(-1).cpu()
                    == y[i : i + batch_size]
                ).sum()
            )
            for i in range(0, count, batch_size)
        )
    finally:
        model.train(was_training)
    return correct / count


def _state_file(model: nn.Module, path: Path) -> Path:
    from safetensors.torch import save

    state = {name: t.detach().cpu().contiguous().clone() for name, t in model.state_dict().items()}
    atomic_write_bytes(path, save(state))
    return path


def artifact_names(with_dense: bool = True) -> list[str]:
    """The file names :func:`compare_artifacts` writes into its ``out_dir`` (ONNX files may get a ``.data`` beside them).

    Example::

        artifact_names(with_dense=False)   # ['pruned.onnx', 'pruned.int8-dynamic.onnx', ...]
    """
    models = ["dense", "pruned"] if with_dense else ["pruned"]
    return [
        *(f"{m}.onnx" for m in models),
        *(f"pruned.int8-{mode}.onnx" for mode in ("dynamic", "static")),
        *(f"{m}.safetensors" for m in models),
        *(f"pruned.compact-{dtype}.safetensors" for dtype in ("fp32", "int8")),
    ]


def compare_artifacts(
    dense_model: nn.Module | None,
    pruned_model: nn.Module,
    test_data: tuple[Any, Any],
    calibration_data: Any,
    out_dir: str | os.PathLike,
    *,
    example_input: Any = None,
    batch_sizes: Sequence[int] = (1, 64),
    warmup: int = 5,
    repeats: int = 30,
    threads: int | None = None,
    measure_memory: bool = True,
    plan: Any = None,
) -> Comparison:
    """Write and measure every artifact of a pruned model, next to its dense original.

    Writes into ``out_dir``: ``dense.onnx``, ``pruned.onnx``, ``pruned.int8-dynamic.onnx``,
    ``pruned.int8-static.onnx`` (calibrated on ``calibration_data``), ``dense.safetensors`` and
    ``pruned.safetensors`` (plain state_dicts), ``pruned.compact-fp32.safetensors`` and
    ``pruned.compact-int8.safetensors`` (:func:`save_compressed`, with ``plan`` in the header;
    by default the structured plan ``prune_channels`` attached to the pruned model, if any).
    ``dense_model`` may be None; the pruned fp32 rows are then the reference. Models with weights
    past :data:`~prunekit.torch.deploy.export.EXTERNAL_DATA_THRESHOLD` get a ``.data`` file beside each
    ONNX file (external data), counted in its sizes.

    Example::

        comparison = compare_artifacts(dense, pruned, (split.x_test, split.y_test), split.x_val, "artifacts")
        comparison.print()
    """
    if not isinstance(test_data, (tuple, list)) or len(test_data) != 2:
        raise ConfigError("test_data should be a pair (x_test, y_test) of inputs and integer labels")
    x_test = as_samples(test_data[0])
    y_test = np.asarray(test_data[1].detach().cpu() if hasattr(test_data[1], "detach") else test_data[1])
    count = sample_count(x_test, "test_data")
    if count != len(y_test) or count == 0:
        raise ConfigError(f"test_data has {count} inputs and {len(y_test)} labels; give as many labels as inputs")
    if example_input is None:
        example_input = _torch_batch(batch_of(x_test, 2), torch.device("cpu"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    models = {"dense": dense_model, "pruned": pruned_model} if dense_model is not None else {"pruned": pruned_model}
    torch_acc = {name: torch_accuracy(model, x_test, y_test) for name, model in models.items()}

    onnx_paths: dict[str, Path] = {}
    errors: dict[str, float] = {}
    for name, model in models.items():
        exported = export_onnx(model, example_input, out / f"{name}.onnx")
        onnx_paths[f"{name} fp32"] = exported.path
        errors[f"{name} fp32"] = exported.check.max_abs_error if exported.check else float("nan")
    for mode in ("dynamic", "static"):
        target = out / f"pruned.int8-{mode}.onnx"
        quantize_onnx(onnx_paths["pruned fp32"], target, mode, calibration_data if mode == "static" else None)
        onnx_paths[f"pruned int8 {mode}"] = target

    latency = time_onnx_files(onnx_paths, x_test, batch_sizes, warmup=warmup, repeats=repeats, threads=threads)
    rows: list[ArtifactRow] = []
    memory_batch = batch_of(x_test, max(batch_sizes))
    for name, path in onnx_paths.items():
        memory = peak_memory(path, memory_batch, threads) if measure_memory else None
        rows.append(
            ArtifactRow(
                name,
                "onnx",
                path,
                *file_sizes(path),
                onnx_accuracy(path, x_test, y_test, threads=threads),
                latency[name],
                memory,
                errors.get(name),
            )
        )

    for name, model in models.items():
        path = _state_file(model, out / f"{name}.safetensors")
        rows.append(ArtifactRow(f"{name} fp32 state_dict", "weights", path, *file_sizes(path), torch_acc[name]))
    for dtype in ("fp32", "int8"):
        path = out / f"pruned.compact-{dtype}.safetensors"
        save_compressed(pruned_model, path, dtype=dtype, plan=plan)
        restored = load_compressed(path, lambda: copy.deepcopy(pruned_model))
        rows.append(
            ArtifactRow(f"pruned compact {dtype}", "weights", path, *file_sizes(path), torch_accuracy(restored, x_test, y_test))
        )
    return Comparison(tuple(rows), tuple(batch_sizes), threads, torch_acc)
