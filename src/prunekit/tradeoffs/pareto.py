"""Pareto fronts: the trials no other trial beats on both quality and cost."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from prunekit.errors import ConfigError


def pareto_front(rows: Sequence[Mapping[str, Any]], maximize: str = "accuracy", minimize: str = "gzip_bytes") -> list[int]:
    """Indices of the rows on the Pareto front of ``maximize`` (higher is better) vs ``minimize`` (lower is better).

    A row is on the front when no other row is at least as good on both and strictly better on
    one. Rows missing either value (failed trials) are skipped. Indices come sorted by cost.

    Example::

        pareto_front([{"accuracy": .9, "macs": 10}, {"accuracy": .8, "macs": 20}], minimize="macs")  # [0]
    """
    points = []
    for index, row in enumerate(rows):
        quality, cost = row.get(maximize), row.get(minimize)
        if quality is None or cost is None:
            continue
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (quality, cost)):
            raise ConfigError(f"row {index}: {maximize}={quality!r} and {minimize}={cost!r} should be finite numbers")
        points.append((float(cost), -float(quality), index))
    points.sort()
    front, best = [], math.inf
    for _cost, negative_quality, index in points:
        if negative_quality < best:
            front.append(index)
            best = negative_quality
    return front
