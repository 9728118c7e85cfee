"""What a structured pruning did, in either framework: groups and layers before and after, and the result.

Framework-free, so ``prunekit.torch.prune_channels`` and ``prunekit.keras.prune_channels`` return the
same :class:`StructuredResult` holding the same :class:`StructuredReport`.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class GroupRecord:
    """One channel group: its channels before/after and the ratio asked of it."""

    name: str
    kind: str
    layers: list[str]
    channels_before: int
    channels_after: int
    requested_ratio: float
    skipped: str = ""

    @property
    def achieved_ratio(self) -> float:
        """Fraction of the group's channels removed."""
        return 1.0 - self.channels_after / self.channels_before if self.channels_before else 0.0


@dataclass(frozen=True)
class LayerRecord:
    """One layer's output channels, parameters and MACs before and after."""

    name: str
    type: str
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    out_channels_before: int | None = None
    out_channels_after: int | None = None


@dataclass
class StructuredReport:
    """Requested vs achieved pruning, per group and per layer, with totals.

    Example::

        print(result.report)            # a table
        result.report.macs_ratio        # MACs before / after, e.g. 3.7
        result.report.to_dict()         # JSON-serialisable
    """

    groups: list[GroupRecord]
    layers: list[LayerRecord]
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    unsupported: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    left_alone: list[tuple[str, str]] = field(default_factory=list)
    requested_macs_ratio: float | None = None

    @property
    def params_ratio(self) -> float:
        """Parameters before divided by after (2.0 = half the parameters)."""
        return self.params_before / max(self.params_after, 1)

    @property
    def macs_ratio(self) -> float:
        """MACs before divided by after."""
        return self.macs_before / max(self.macs_after, 1)

    @property
    def channels_before(self) -> int:
        return sum(g.channels_before for g in self.groups)

    @property
    def channels_after(self) -> int:
        return sum(g.channels_after for g in self.groups)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for JSON), with the derived ratios included."""
        data = asdict(self)
        for record, source in zip(data["groups"], self.groups):
            record["achieved_ratio"] = source.achieved_ratio
        data["unsupported"] = [list(x) for x in self.unsupported]
        data["left_alone"] = [list(x) for x in self.left_alone]
        data["params_ratio"] = self.params_ratio
        data["macs_ratio"] = self.macs_ratio
        return data

    def __str__(self) -> str:
        lines = [f"{'group':<44}{'kind':<10}{'channels':>14}{'requested':>11}{'achieved':>10}"]
        for g in self.groups:
            state = g.skipped or ""
            lines.append(
                f"{g.name[-43:]:<44}{g.kind:<10}{g.channels_before:>6} -> {g.channels_after:<5}"
                f"{g.requested_ratio:>10.1%}{g.achieved_ratio:>10.1%}  {state}"
            )
        lines.append("")
        lines.append(f"{'layer':<44}{'type':<18}{'params':>22}{'MACs':>26}")
        for layer in self.layers:
            if layer.params_before == layer.params_after and layer.macs_before == layer.macs_after:
                continue
            lines.append(
                f"{(layer.name or '<root>')[-43:]:<44}{layer.type[:17]:<18}{layer.params_before:>10,} -> "
                f"{layer.params_after:<9,}{layer.macs_before:>12,} -> {layer.macs_after:<10,}"
            )
        lines.append("")
        lines.append(
            f"params {self.params_before:,} -> {self.params_after:,} ({self.params_ratio:.2f}x fewer)   "
            f"MACs {self.macs_before:,} -> {self.macs_after:,} ({self.macs_ratio:.2f}x fewer)"
        )
        if self.requested_macs_ratio is not None:
            lines.append(f"requested about {self.requested_macs_ratio:.2f}x fewer MACs, achieved {self.macs_ratio:.2f}x")
        for label, reason in self.unsupported:
            lines.append(f"left unpruned: {label} ({reason})")
        for where, reason in self.left_alone:
            lines.append(f"channels kept: {where}: {reason}")
        lines.extend(self.notes)
        return "\n".join(lines)


@dataclass
class StructuredResult:
    """What ``prune_channels`` and ``remove_channels`` return, in PyTorch and Keras.

    ``model`` is the physically smaller model (an ``nn.Module`` or a ``keras.Model``); ``plan`` the
    JSON-serialisable record of what was removed, which that framework replays (PyTorch:
    ``save_pruned``/``load_pruned``; Keras: ``remove_channels(model, **plan)``); ``report`` the
    requested vs achieved channels, params and MACs; ``removed`` the removed channel indices per
    group name. (It holds no reference to the original tensors, so they are freed with the
    original model.)

    Example::

        result = prune_channels(model, x, 0.5)
        print(result.report)
        small = result.model
    """

    model: Any
    plan: dict[str, Any]
    report: StructuredReport
    removed: dict[str, list[int]]

    def __getattr__(self, name: str) -> Any:
        # Keras' prune_channels/remove_channels returned the model itself until this release.
        if name.startswith("__") or name in {"model", "plan", "report", "removed"}:
            raise AttributeError(name)
        value = getattr(self.model, name)
        warnings.warn(
            f"prune_channels/remove_channels return a StructuredResult: use result.model.{name} "
            "(reading the model's attributes from the result goes away in the next release)",
            DeprecationWarning,
            stacklevel=2,
        )
        return value


__all__ = ["GroupRecord", "LayerRecord", "StructuredReport", "StructuredResult"]
