"""Achieved vs requested MACs: what a channel ratio should have removed, and who kept the rest.

The *requested* MACs ratio is what the pruning would have reached had every prunable-looking
dimension it left alone (an op without a rule, a literal size, a user ignore) also lost the ratio:
a layer's MACs scale with the kept fraction of each of its weight's channel dimensions (the
model's own inputs and outputs stay whole). When the achieved ratio falls more than 10 % short,
the dimensions left alone are listed, largest excess MACs first, so a silent no-op cannot pass
unnoticed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from prunekit.torch.measure.macs import MacsReport
from prunekit.torch.structured.graph import DependencyGraph, is_structural
from prunekit.torch.structured.labels import FIXED, tensor_refs

SHORTFALL_TOLERANCE = 0.10


@dataclass(frozen=True)
class Shortfall:
    """The requested and achieved MACs ratios and, if short, the lines naming the causes."""

    requested: float
    achieved: float
    causes: list[str]

    @property
    def short(self) -> bool:
        """Whether the achieved ratio is more than 10 % below the requested one, because of
        dimensions left alone (not rounding or ``max_layer_ratio``)."""
        return bool(self.causes) and self.achieved < (1.0 - SHORTFALL_TOLERANCE) * self.requested

    def message(self) -> str:
        """The warning text."""
        listed = "; ".join(self.causes[:8])
        more = f" (and {len(self.causes) - 8} more)" if len(self.causes) > 8 else ""
        return (
            f"structured pruning removed {self.achieved:.2f}x of the MACs where the requested ratio asks about "
            f"{self.requested:.2f}x; left alone: {listed}{more}"
        )


def _layer_factors(graph: DependencyGraph, ratio: float, removed: np.ndarray, ignored: set[int]) -> dict[str, float]:
    """Per module: the MACs fraction that would be left had every dimension left alone lost ``ratio``.

    Positions of groups keep what was actually removed (so rounding, ``layer_ratios`` and the
    global scope's choices are not a shortfall); positions fixed by the analysis and groups the
    user ignored count as removed at ``ratio``; positions kept by the model's structure (its inputs
    and outputs, ties to batch/space/token positions) count as kept.
    """
    state = graph.state
    reason_of, texts = state.fixed_reasons()
    io_numbers = np.array([i for i, t in enumerate(texts) if is_structural(t)] or [-2], np.int64)
    per_tensor: dict[str, float] = {}
    seen: set[tuple[str, int]] = set()
    for name, dim in list(state.producers) + sorted(state.consumers):
        if (name, dim) in seen or name not in state.tensor_atoms:
            continue
        seen.add((name, dim))
        per_tensor.setdefault(name, 1.0)
        atoms = state.tensor_atoms[name][dim]
        if len(atoms) < 2:
            continue  # a depthwise conv's single input position per group: nothing to take a ratio of
        roots = graph.roots[atoms]
        fixed = roots == FIXED
        by_io = fixed & np.isin(reason_of[atoms], io_numbers)
        wanted = (fixed & ~by_io) | np.isin(graph.group_of_root[roots], list(ignored))
        kept = (~fixed & ~wanted & ~removed[atoms]).sum() + by_io.sum() + wanted.sum() * (1.0 - ratio)
        per_tensor[name] *= float(kept) / len(atoms)
    # a layer's MACs follow its weights' sizes: average its tensors' kept fractions by their sizes
    weighted: dict[str, list[float]] = {}
    for name, fraction in per_tensor.items():
        size = float(np.prod([len(a) for a in state.tensor_atoms[name]]))
        total = weighted.setdefault(name.rpartition(".")[0], [0.0, 0.0])
        total[0] += size * fraction
        total[1] += size
    return {module: kept / size for module, (kept, size) in weighted.items() if size}


def measure_shortfall(
    graph: DependencyGraph,
    before: MacsReport,
    after: MacsReport,
    ratio: float,
    removed: np.ndarray,
    ignored: dict[int, str],
) -> Shortfall:
    """Compare the achieved MACs ratio with the one had nothing been left alone at ``ratio``.

    ``removed`` marks the atoms the pruning removed; ``ignored`` maps the ids of groups the user
    excluded to a line naming them (listed as causes with the analysis' own reasons).
    """
    factors = _layer_factors(graph, ratio, removed, set(ignored))
    ideal_after = sum(macs * factors.get(layer, 1.0) for layer, macs in before.per_layer.items())
    ideal_after += before.total - sum(before.per_layer.values())
    requested = before.total / max(ideal_after, 1.0)
    achieved = before.total / max(after.total, 1)
    excess = {layer: after.per_layer.get(layer, 0) - macs * factors.get(layer, 1.0) for layer, macs in before.per_layer.items()}
    entries = [(e.module, e.text) for e in graph.left_alone if not e.expected]
    entries += [(graph.groups[gid].producers[0] if graph.groups[gid].producers else "", text) for gid, text in ignored.items()]
    entries.sort(key=lambda item: -excess.get(item[0], 0.0))
    return Shortfall(requested, achieved, [text for _, text in entries])


def heads_kept_whole(graph: DependencyGraph) -> list[str]:
    """The head problems (``head structure not understood``) of attention products none of whose
    operands' heads dimension (``-3``) holds a prunable channel: there the heads are kept whole, silently
    but for this list (where another path prunes the heads, as multi-query attention's, none is listed)."""
    state = graph.state
    pending: dict[str, list[str]] = {}
    for label, reason in graph.head_problems:
        pending.setdefault(label, []).append(reason)
    found = []
    for op in state.trace.ops:
        if not pending.get(op.label):
            continue
        operands = [r for r in tensor_refs(op.args[:3]) if len(state.trace.shapes[r.vid]) >= 3]
        if all((graph.roots[state.get(r)[-3]] == FIXED).all() for r in operands):
            found.append(pending[op.label].pop(0))
    return found


__all__ = ["SHORTFALL_TOLERANCE", "Shortfall", "heads_kept_whole", "measure_shortfall"]
