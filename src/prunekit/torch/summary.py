"""One table per model: every layer's parameters, nonzeros, sparsity, dense MACs and sparse MACs.

Dense MACs come from :func:`~prunekit.torch.count_macs` (a dispatch trace). Sparse MACs scale a
layer's MACs by the density of its weights: what a sparse kernel would execute, and the budget
unstructured pruning reduces (structured pruning reduces the dense MACs themselves).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from prunekit.report.tables import ResultTable
from prunekit.torch.macs import ExampleInputs, count_macs


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
            table.add_row(layer.name or "(root)", layer.type, f"{layer.params:,}", f"{layer.nonzeros:,}",
                          f"{layer.sparsity:.1%}", f"{layer.macs:,}", f"{layer.sparse_macs:,}")
        table.add_row("total", "", f"{self.params:,}", f"{self.nonzeros:,}", f"{self.sparsity:.1%}",
                      f"{self.macs:,}", f"{self.sparse_macs:,}")
        return table


def summarize(model: nn.Module, example_inputs: ExampleInputs) -> ModelSummary:
    """Per-layer parameters, nonzeros, MACs and sparse MACs of ``model`` on ``example_inputs``.

    A layer's sparse MACs are its MACs times the density of its ``weight`` (layers without a
    weight keep their MACs). MACs scale with the batch size of the example inputs.

    Example::

        summary = summarize(DigitsCNN(), torch.zeros(1, 1, 8, 8))
        summary.layer("conv2").macs   # 64 * 8 * 8 * 32 * 9 = 1179648
        summary.table().print()
    """
    report = count_macs(model, example_inputs)
    modules = dict(model.named_modules())
    layers = []
    for name, macs in report.per_layer.items():
        module = modules[name]
        seen_params = report.per_layer_params[name]
        own = [p for p in module.parameters(recurse=False)]
        nonzeros = sum(int(torch.count_nonzero(p.detach())) for p in own) if seen_params else 0
        weight = getattr(module, "weight", None)
        density = 1.0
        if isinstance(weight, torch.Tensor) and weight.numel():
            density = int(torch.count_nonzero(weight.detach())) / weight.numel()
        layers.append(LayerStats(name, report.layer_types[name], seen_params, min(nonzeros, seen_params) if seen_params else 0,
                                 macs, round(macs * density)))
    return ModelSummary(layers)
