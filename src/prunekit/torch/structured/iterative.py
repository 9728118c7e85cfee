"""Iterative structured pruning: prune a step, fine-tune, repeat, until the target ratio."""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from torch import nn

from prunekit.errors import ConfigError
from prunekit.torch.structured.graph import analyze_dependencies
from prunekit.torch.structured.prune import StructuredResult, prune_channels
from prunekit.torch.structured.report import GroupRecord, build_report, measure
from prunekit.torch.structured.tracing import ExampleInputs


def step_ratios(ratio: float, steps: int) -> list[float]:
    """Per-step ratios (of the channels left) that remove ``ratio * k / steps`` of the original
    channels after step ``k``.

    Example::

        step_ratios(0.5, 2)  # [0.25, 0.333...]: 100 -> 75 -> 50 channels
    """
    removed = [ratio * k / steps for k in range(steps + 1)]
    return [1.0 - (1.0 - removed[k]) / (1.0 - removed[k - 1]) for k in range(1, steps + 1)]


def prune_channels_iteratively(
    model: nn.Module,
    example_inputs: ExampleInputs,
    ratio: float = 0.5,
    *,
    steps: int = 3,
    fine_tune: Callable[[nn.Module, int], Any] | None = None,
    train_loader: Iterable | None = None,
    epochs_per_step: int = 1,
    lr: float = 1e-3,
    inplace: bool = False,
    **prune_kwargs: Any,
) -> StructuredResult:
    """Reach ``ratio`` in ``steps`` equal steps of :func:`prune_channels`, fine-tuning after each.

    Fine-tuning is ``fine_tune(model, step)`` if given, else ``fit(model, train_loader,
    epochs=epochs_per_step, lr=lr)`` from ``prunekit.torch.training`` (a new optimizer each
    step, since pruning replaces the parameters). Other keyword arguments (``importance``,
    ``scope``, ``layer_ratios``, ``round_to``, ignore lists ...) go to every step;
    ``layer_ratios`` are reached step by step like ``ratio``. The report and plan compare the
    final model with the original.

    Example::

        result = prune_channels_iteratively(DigitsCNN(), x, 0.5, steps=2, train_loader=loader)
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps should be an integer >= 1, got {steps!r}")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
        raise ConfigError(f"ratio should be a number in [0, 1), got {ratio!r}")
    if fine_tune is not None and train_loader is not None:
        raise ConfigError("pass fine_tune or train_loader, not both")
    if "inplace" in prune_kwargs:
        raise ConfigError("pass inplace to prune_channels_iteratively itself")
    layer_ratios = dict(prune_kwargs.pop("layer_ratios", None) or {})
    current = model if inplace else copy.deepcopy(model)
    before = measure(current, example_inputs)
    first = analyze_dependencies(
        current,
        example_inputs,
        protect_outputs=prune_kwargs.get("protect_outputs", True),
        leaf_modules=prune_kwargs.get("leaf_modules", ()),
        rules=prune_kwargs.get("rules"),
    )
    per_layer = {pattern: step_ratios(value, steps) for pattern, value in layer_ratios.items()}
    result: StructuredResult | None = None
    notes: list[str] = []
    for index, step_ratio in enumerate(step_ratios(float(ratio), steps)):
        result = prune_channels(
            current,
            example_inputs,
            step_ratio,
            inplace=True,
            layer_ratios={p: r[index] for p, r in per_layer.items()},
            **prune_kwargs,
        )
        notes.extend(result.report.notes)
        current = result.model
        if fine_tune is not None:
            fine_tune(current, index + 1)
        elif train_loader is not None:
            from prunekit.torch.training import fit

            fit(current, train_loader, epochs=epochs_per_step, lr=lr, progress=False)
    assert result is not None
    plan = result.plan
    records = []
    for group in first.groups:
        producer = next(m for m in group.members if m.role == "producer")
        keep = plan["tensors"].get(producer.tensor, {}).get("keep", {}).get(str(producer.dim))
        kept_index = producer.index if keep is None else producer.index[np.asarray(keep, np.int64)]
        after = len(np.unique(kept_index[kept_index >= 0]))
        requested = next((float(v) for p, v in layer_ratios.items() if _hit(group.producers, p)), float(ratio))
        records.append(GroupRecord(group.name, group.kind, group.producers, group.size, after, requested))
    after_measure = measure(current, example_inputs)
    out_channels = {}
    for group in first.groups:
        for member in group.members:
            if member.role == "producer" and member.module not in out_channels:
                keep = plan["tensors"].get(member.tensor, {}).get("keep", {}).get(str(member.dim))
                out_channels[member.module] = (len(member.index), len(member.index) if keep is None else len(keep))
    report = build_report(before, after_measure, records, out_channels, result.report.unsupported, notes)
    return StructuredResult(current, plan, report, result.removed)


def _hit(names: list[str], pattern: str) -> bool:
    return any(fnmatch.fnmatchcase(n, pattern) for n in names)


__all__ = ["prune_channels_iteratively", "step_ratios"]
