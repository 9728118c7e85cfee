"""The report of a structured pruning: requested vs achieved channels per group, and parameters
and MACs per layer and in total, before and after."""

from __future__ import annotations

from typing import Any

from torch import nn

from prunekit.core.structured import GroupRecord, LayerRecord, StructuredReport
from prunekit.torch.measure.macs import MacsReport, count_macs


def measure(model: nn.Module, example_inputs: Any) -> MacsReport:
    """MACs and parameters per layer, measured in eval mode (training flags restored)."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        return count_macs(model, example_inputs)
    finally:
        for m, mode in modes.items():
            m.training = mode


def build_report(
    before: MacsReport,
    after: MacsReport,
    groups: list[GroupRecord],
    out_channels: dict[str, tuple[int, int]],
    unsupported: list[tuple[str, str]],
    notes: list[str],
    left_alone: list[tuple[str, str]] | None = None,
    requested_macs_ratio: float | None = None,
) -> StructuredReport:
    """Assemble a report from before/after measurements and per-group channel counts."""
    layers = []
    for name in before.per_layer:
        channels = out_channels.get(name, (None, None))
        layers.append(
            LayerRecord(
                name,
                before.layer_types.get(name, ""),
                before.per_layer_params.get(name, 0),
                after.per_layer_params.get(name, 0),
                before.per_layer.get(name, 0),
                after.per_layer.get(name, 0),
                channels[0],
                channels[1],
            )
        )
    return StructuredReport(
        groups,
        layers,
        before.params,
        after.params,
        before.total,
        after.total,
        list(unsupported),
        list(notes),
        list(left_alone or []),
        requested_macs_ratio,
    )


__all__ = ["GroupRecord", "LayerRecord", "StructuredReport", "build_report", "measure"]
