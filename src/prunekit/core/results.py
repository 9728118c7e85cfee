"""The one results schema that ``prunekit run``, ``demo``, ``sweep`` and ``export`` write and ``prunekit gate`` reads.

Each command's ``results.json`` (``--json`` for ``export``) keeps its own detailed keys and adds
these four, so one reader understands all of them::

    {
      "schema": "prunekit.results/1",
      "source": "run" | "demo" | "sweep" | "export",
      "baseline": {"name": "dense", "accuracy": 0.972, "size_bytes": 612397, "gzip_bytes": 565247,
                   "latency_ms": 0.04, "latency_batch": 1, "path": null} | null,
      "candidates": [{"name": "gradual 90%", "accuracy": 0.969, ...same keys...}, ...]
    }

``accuracy`` is a fraction in [0, 1]; ``size_bytes``/``gzip_bytes`` are the bytes of the model as
stored (state_dict or file) and gzip-compressed; ``latency_ms`` is the median latency at
``latency_batch`` (the smallest batch size measured). Any figure may be ``null`` when the command
did not measure it. ``baseline`` is the dense model the candidates were pruned from, when known.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prunekit.errors import ConfigError, CorruptFileError

SCHEMA = "prunekit.results/1"
SOURCES = ("run", "demo", "sweep", "export")
_FIGURES = ("accuracy", "size_bytes", "gzip_bytes", "latency_ms", "latency_batch")


@dataclass(frozen=True)
class Candidate:
    """One model a command measured: its name, accuracy (fraction), stored and gzip bytes, batch latency.

    Example::

        Candidate("gradual 90%", accuracy=0.969, gzip_bytes=120_000, latency_ms=0.05, latency_batch=1)
    """

    name: str
    accuracy: float | None = None
    size_bytes: int | None = None
    gzip_bytes: int | None = None
    latency_ms: float | None = None
    latency_batch: int | None = None
    path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Candidate:
        """Validate one schema entry; ``where`` names it in errors (``results.json: candidates[2]``)."""
        if not isinstance(data, Mapping):
            raise CorruptFileError(f"{where} should be a mapping with at least a 'name', got {type(data).__name__}")
        unknown = sorted(set(data) - {"name", "path", *_FIGURES})
        if unknown:
            raise CorruptFileError(
                f"{where} has unknown key(s) {unknown}; the {SCHEMA} keys are name, path, {', '.join(_FIGURES)}"
            )
        name = data.get("name")
        if not isinstance(name, str) or not name:
            raise CorruptFileError(f"{where}.name should be a non-empty string, got {name!r}")
        values: dict[str, Any] = {}
        for key in _FIGURES:
            value = data.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise CorruptFileError(f"{where}.{key} should be a finite number >= 0 or null, got {value!r}")
            if key == "accuracy" and value > 1:
                raise CorruptFileError(f"{where}.accuracy should be a fraction in [0, 1], got {value!r}")
            values[key] = value
        path = data.get("path")
        return cls(name=name, path=None if path is None else str(path), **values)


@dataclass(frozen=True)
class Results:
    """A results file read through the schema: which command wrote it, the dense baseline and the candidates."""

    source: str
    baseline: Candidate | None
    candidates: list[Candidate] = field(default_factory=list)
    path: str = "results"


def candidate_name(method: str, amount: float) -> str:
    """The name a pruned run goes by in results: the method and its target as a percentage (``gradual 90%``)."""
    return f"{method} {amount * 100:g}%"


def results_block(source: str, baseline: Candidate | None, candidates: Iterable[Candidate]) -> dict[str, Any]:
    """The schema's keys, to merge into a command's results dict before it is written.

    Example::

        results.update(results_block("demo", Candidate("dense", accuracy=0.97), [Candidate("gradual 90%", accuracy=0.96)]))
    """
    if source not in SOURCES:
        raise ConfigError(f"results source should be one of {SOURCES}, got {source!r}")
    return {
        "schema": SCHEMA,
        "source": source,
        "baseline": None if baseline is None else baseline.to_dict(),
        "candidates": [candidate.to_dict() for candidate in candidates],
    }


def smallest_batch_latency(latency: Mapping[Any, Any] | Iterable[Mapping[str, Any]] | None) -> tuple[float | None, int | None]:
    """``(median ms, batch)`` at the smallest batch size from either latency shape prunekit writes.

    Accepts ``{"1": {"median": ...}, "64": {...}}`` (artifact rows) and ``[{"batch_size": 1,
    "median_ms": ...}, ...]`` (``LatencyResult.to_dict()`` lists); ``(None, None)`` when empty.

    Example::

        smallest_batch_latency([{"batch_size": 32, "median_ms": 2.0}, {"batch_size": 1, "median_ms": 0.1}])  # (0.1, 1)
    """
    if not latency:
        return None, None
    if isinstance(latency, Mapping):
        pairs = [(int(batch), float(entry["median"])) for batch, entry in latency.items()]
    else:
        pairs = [(int(entry["batch_size"]), float(entry["median_ms"])) for entry in latency]
    batch, median = min(pairs)
    return median, batch


def artifact_candidates(rows: Iterable[Mapping[str, Any]]) -> tuple[Candidate | None, list[Candidate]]:
    """Baseline and candidates from the rows of an artifact comparison (``ArtifactComparison.to_dict()["rows"]``).

    The ``dense fp32`` row is the baseline; other rows named ``dense ...`` are skipped, every other
    row is a candidate.
    """
    baseline, candidates = None, []
    for row in rows:
        median, batch = smallest_batch_latency(row.get("latency_ms"))
        candidate = Candidate(
            name=str(row["name"]),
            accuracy=row.get("accuracy"),
            size_bytes=row.get("size_bytes"),
            gzip_bytes=row.get("gzip_bytes"),
            latency_ms=median,
            latency_batch=batch,
            path=row.get("path"),
        )
        if row["name"] == "dense fp32":
            baseline = candidate
        elif not str(row["name"]).startswith("dense"):
            candidates.append(candidate)
    return baseline, candidates


def parse_results(data: Any, where: str = "results") -> Results:
    """Read a parsed results dict through the schema; :class:`CorruptFileError` names the bad key.

    Example::

        parse_results(json.loads(Path("run-out/results.json").read_text())).candidates[0].accuracy
    """
    if not isinstance(data, Mapping):
        raise CorruptFileError(f"{where} should hold a JSON object, got {type(data).__name__}")
    if data.get("schema") != SCHEMA:
        raise CorruptFileError(
            f"{where} has schema {data.get('schema')!r}, not {SCHEMA!r}: give the results.json that prunekit run, demo "
            "or sweep wrote (or export's --json file), from this prunekit version or later"
        )
    source = data.get("source")
    if source not in SOURCES:
        raise CorruptFileError(f"{where}.source should be one of {SOURCES}, got {source!r}")
    baseline = None if data.get("baseline") is None else Candidate.from_dict(data["baseline"], f"{where}: baseline")
    entries = data.get("candidates")
    if not isinstance(entries, list):
        raise CorruptFileError(f"{where}.candidates should be a list, got {type(entries).__name__}")
    candidates = [Candidate.from_dict(entry, f"{where}: candidates[{i}]") for i, entry in enumerate(entries)]
    names = [c.name for c in candidates]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise CorruptFileError(f"{where} names candidates {duplicates} more than once")
    return Results(str(source), baseline, candidates, where)


def read_results(path: str | os.PathLike[str]) -> Results:
    """Read a ``results.json`` (or ``export --json`` file) through the schema.

    Example::

        results = read_results("run-out/results.json")
        [c.name for c in results.candidates]
    """
    file = Path(path)
    if file.is_dir():
        raise ConfigError(f"{file} is a directory; give the results.json inside it (e.g. {file / 'results.json'})")
    if not file.is_file():
        raise ConfigError(f"results file {file} does not exist; run prunekit run/demo/sweep/export first")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"{file} is not a JSON results file: {exc}") from None
    return parse_results(data, str(file))
