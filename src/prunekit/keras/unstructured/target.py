"""Warn when a Keras pruning run ends far below its schedule's target (the twin of ``Pruner.check_target``)."""

from __future__ import annotations

import numpy as np

from prunekit.keras.unstructured.state import LayerPruning, select_mask
from prunekit.schedules import PruningSchedule, warn_if_short


def check_targets(states: list[LayerPruning], where: str) -> bool:
    """Warn (:class:`~prunekit.errors.SparsityWarning`) per schedule whose layers are far below its final sparsity.

    ``UpdatePruningStep.on_train_end`` and ``strip_pruning`` call it; the layers sharing one
    schedule are named in one warning, and a layer warns once (``state.warned``). What a layer can
    reach (whole weights, blocks, m-by-n groups) is what its mask selection gives at the final
    sparsity, so rounding on a tiny layer is no shortfall. Returns whether it warned.
    """
    groups: dict[int, tuple[PruningSchedule, list[LayerPruning]]] = {}
    for state in states:
        if state.attached and not state.warned:
            groups.setdefault(id(state.spec.schedule), (state.spec.schedule, []))[1].append(state)
    warned = False
    for schedule, group in groups.values():
        zeros = reachable = total = 0
        for state in group:
            for weight, mask, path in zip(state.weights, state.masks, state.weight_paths):
                keep = mask.numpy()
                final = select_mask(np.asarray(weight.numpy()), schedule.final_sparsity, None, state.spec, path)
                zeros += int(keep.size - np.count_nonzero(keep))
                reachable += int(final.size - np.count_nonzero(final))
                total += int(keep.size)
        if not total:
            continue
        names = ", ".join(repr(state.layer_name) for state in group)
        steps = max(0, max(int(state.step.numpy()) for state in group))
        achieved, most = zeros / total, reachable / total
        if warn_if_short(schedule, steps, achieved, schedule.final_sparsity, f"{where}, layer(s) {names}", reachable=most):
            for state in group:
                state.warned = True
            warned = True
    return warned
