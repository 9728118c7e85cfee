"""What prunekit measures about a model, framework-free: per-layer statistics, latency, peak memory.

The PyTorch (:mod:`prunekit.torch.measure.summary`, :mod:`prunekit.torch.measure.latency`) and Keras
(:mod:`prunekit.keras.measure.summary`) backends fill the same types, so tables and reports read both.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from prunekit.core.tables import ResultTable


def sparsity_summary(tensors: Iterable[tuple[str, Sequence[int], int]]) -> dict[str, Any]:
    """The sparsity report of both backends from ``(name, shape, nonzero)`` per tensor.

    Example::

        sparsity_summary([("fc.weight", [2, 4], 3)])["sparsity"]  # 0.625
    """
    layers: dict[str, dict[str, Any]] = {}
    for name, shape, nonzero in tensors:
        numel = math.prod(shape)
        layers[name] = {
            "shape": list(shape),
            "numel": numel,
            "nonzero": nonzero,
            "sparsity": 1.0 - nonzero / numel if numel else 0.0,
        }
    total = sum(layer["numel"] for layer in layers.values())
    nonzero = sum(layer["nonzero"] for layer in layers.values())
    return {
        "layers": layers,
        "total_params": total,
        "nonzero_params": nonzero,
        "sparsity": 1.0 - nonzero / total if total else 0.0,
    }


@dataclass(frozen=True)
class LayerStats:
    """One layer: its type, parameters it owns, how many are nonzero, and MACs dense and sparse."""

    name: str
    type: str
    params: int
    nonzeros: int
    macs: int
    sparse_macs: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzeros / self.params if self.params else 0.0


@dataclass(frozen=True)
class ModelSummary:
    """Per-layer statistics and totals of a model on given example inputs."""

    layers: list[LayerStats] = field(default_factory=list)

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def nonzeros(self) -> int:
        return sum(layer.nonzeros for layer in self.layers)

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def sparse_macs(self) -> int:
        return sum(layer.sparse_macs for layer in self.layers)

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzeros / self.params if self.params else 0.0

    def totals(self) -> dict[str, Any]:
        """The model-level figures a results row holds: params, nonzeros, sparsity, MACs, sparse MACs."""
        return {
            "params": self.params,
            "nonzeros": self.nonzeros,
            "sparsity": self.sparsity,
            "macs": self.macs,
            "sparse_macs": self.sparse_macs,
        }

    def layer(self, name: str) -> LayerStats:
        """The row of layer ``name`` (a ``KeyError`` naming the known layers otherwise)."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer {name!r}; layers: {[layer.name for layer in self.layers]}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": [dict(asdict(layer), sparsity=layer.sparsity) for layer in self.layers],
            "params": self.params,
            "nonzeros": self.nonzeros,
            "sparsity": self.sparsity,
            "macs": self.macs,
            "flops": 2 * self.macs,
            "sparse_macs": self.sparse_macs,
        }

    def table(self, title: str = "Layers") -> ResultTable:
        """The summary as a :class:`ResultTable` (console and Markdown), with a total row."""
        table = ResultTable(title, ["layer", "type", "params", "nonzeros", "sparsity", "MACs", "sparse MACs"])
        for layer in self.layers:
            table.add_row(
                layer.name or "(root)",
                layer.type,
                f"{layer.params:,}",
                f"{layer.nonzeros:,}",
                f"{layer.sparsity:.1%}",
                f"{layer.macs:,}",
                f"{layer.sparse_macs:,}",
            )
        table.add_row(
            "total",
            "",
            f"{self.params:,}",
            f"{self.nonzeros:,}",
            f"{self.sparsity:.1%}",
            f"{self.macs:,}",
            f"{self.sparse_macs:,}",
        )
        return table


@dataclass(frozen=True)
class LatencyResult:
    """Latency of one batch size on one device over ``runs`` timed runs, in milliseconds."""

    device: str
    batch_size: int
    median_ms: float
    p90_ms: float
    runs: int
    threads: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MemoryResult:
    """Peak memory of one forward pass: weights/buffers, activations at the peak, and their sum (bytes)."""

    device: str
    batch_size: int
    weight_bytes: int
    peak_activation_bytes: int
    peak_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def epoch_records(history: Mapping[str, Sequence[float]]) -> list[dict[str, float]]:
    """A Keras ``History.history`` (metric -> one value per epoch) as one record per epoch, numbered from 1
    like the PyTorch ``fit`` history.

    Example::

        epoch_records({"loss": [0.9, 0.4]})   # [{"epoch": 1, "loss": 0.9}, {"epoch": 2, "loss": 0.4}]
    """
    epochs = len(next(iter(history.values()), []))
    return [{"epoch": i + 1, **{key: float(values[i]) for key, values in history.items()}} for i in range(epochs)]
