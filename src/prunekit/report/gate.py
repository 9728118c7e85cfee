"""A quality gate for CI pipelines: check the results of run/demo/sweep/export against bounds.

Like MLflow's metric-threshold validation: each bound is a limit on one figure of a candidate
(accuracy drop from the dense baseline in percentage points, compression = baseline gzip bytes /
candidate gzip bytes, latency in ms at the smallest batch measured). The verdict lists every check,
renders as a table and as JUnit XML (which GitHub Actions and GitLab CI show per test).

Example::

    verdict = evaluate_gate(read_results("run-out/results.json"), GateBounds(max_accuracy_drop=1.0, min_compression=4))
    verdict.table().print()
    raise SystemExit(0 if verdict.passed else 1)
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from prunekit.core.atomic import atomic_write_text
from prunekit.core.results import Candidate, Results, parse_results, read_results
from prunekit.core.tables import ResultTable
from prunekit.errors import ConfigError

Require = Literal["all", "any"]


@dataclass(frozen=True)
class GateBounds:
    """The limits a candidate must meet; ``None`` leaves a figure unchecked.

    ``max_accuracy_drop``: percentage points below the baseline's accuracy (1.0 = one point);
    ``min_compression``: baseline gzip bytes / candidate gzip bytes; ``max_latency_ms``: median
    latency at the smallest batch size measured.

    Example::

        GateBounds(max_accuracy_drop=1.0, min_compression=4, max_latency_ms=20)
    """

    max_accuracy_drop: float | None = None
    min_compression: float | None = None
    max_latency_ms: float | None = None

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"gate bound {name} should be a finite number, got {value!r}")
            if name == "min_compression" and value <= 0:
                raise ConfigError(f"gate bound min_compression should be > 0 (1 = no smaller than the baseline), got {value!r}")
            if name != "min_compression" and value < 0:
                raise ConfigError(f"gate bound {name} should be >= 0, got {value!r}")
        if all(value is None for value in asdict(self).values()):
            raise ConfigError("the gate has no bound: give max_accuracy_drop, min_compression and/or max_latency_ms")

    @property
    def needs_baseline(self) -> bool:
        return self.max_accuracy_drop is not None or self.min_compression is not None


@dataclass(frozen=True)
class GateCheck:
    """One bound checked on one candidate: the bound's text, the measured value's text and the verdict."""

    candidate: str
    bound: str
    value: str
    passed: bool


@dataclass
class GateVerdict:
    """Every check of a gate run; ``passed`` follows ``require`` (every candidate, or at least one, passes all)."""

    checks: list[GateCheck]
    require: Require = "all"
    skipped: dict[str, str] = field(default_factory=dict)
    source: str = "results"

    @property
    def passed(self) -> bool:
        by_candidate: dict[str, bool] = {}
        for check in self.checks:
            by_candidate[check.candidate] = by_candidate.get(check.candidate, True) and check.passed
        verdicts = list(by_candidate.values())
        return bool(verdicts) and (all(verdicts) if self.require == "all" else any(verdicts))

    def table(self) -> ResultTable:
        """The bound, value and verdict of every check, as a table to print or render as Markdown."""
        table = ResultTable(f"prunekit gate: {self.source}", ["candidate", "bound", "value", "verdict"])
        for check in self.checks:
            table.add_row(check.candidate, check.bound, check.value, "pass" if check.passed else "FAIL")
        return table

    def summary(self) -> str:
        """One line: passed or failed, and why."""
        failed = sorted({c.candidate for c in self.checks if not c.passed})
        candidates = len({c.candidate for c in self.checks})
        if self.passed:
            return (
                f"gate passed: {candidates - len(failed)} of {candidates} candidate(s) meet every bound (require {self.require})"
            )
        reasons = "; ".join(f"{c.candidate}: {c.bound}, got {c.value}" for c in self.checks if not c.passed)
        return f"gate FAILED (require {self.require}): {reasons}"

    def to_junit(self) -> str:
        """JUnit XML: one test suite, one test case per check (skipped candidates as skipped cases)."""
        failures = sum(not c.passed for c in self.checks)
        suite = ET.Element(
            "testsuite",
            name="prunekit gate",
            tests=str(len(self.checks) + len(self.skipped)),
            failures=str(failures),
            errors="0",
            skipped=str(len(self.skipped)),
        )
        ET.SubElement(ET.SubElement(suite, "properties"), "property", name="source", value=self.source)
        for check in self.checks:
            case = ET.SubElement(suite, "testcase", classname=check.candidate, name=check.bound)
            if not check.passed:
                ET.SubElement(case, "failure", message=f"{check.candidate}: {check.bound}, got {check.value}", type="GateFailure")
        for candidate, reason in self.skipped.items():
            ET.SubElement(ET.SubElement(suite, "testcase", classname=candidate, name="gate"), "skipped", message=reason)
        suites = ET.Element("testsuites", name="prunekit gate", tests=suite.get("tests", "0"), failures=str(failures))
        suites.append(suite)
        ET.indent(suites)
        return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"

    def write_junit(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_junit` to ``path`` atomically."""
        atomic_write_text(path, self.to_junit())

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "require": self.require,
            "source": self.source,
            "checks": [asdict(check) for check in self.checks],
            "skipped": dict(self.skipped),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GateVerdict:
        return cls([GateCheck(**check) for check in data["checks"]], data["require"], dict(data["skipped"]), data["source"])


def _missing(candidate: Candidate, reference: Candidate | None, bounds: GateBounds) -> str | None:
    """Why ``candidate`` cannot be checked against ``bounds`` (a figure it or the baseline lacks), else None."""
    needed = []
    if bounds.max_accuracy_drop is not None:
        needed += [("accuracy", candidate), ("accuracy", reference)]
    if bounds.min_compression is not None:
        needed += [("gzip_bytes", candidate), ("gzip_bytes", reference)]
    if bounds.max_latency_ms is not None:
        needed.append(("latency_ms", candidate))
    for figure, entry in needed:
        if entry is not None and getattr(entry, figure) is None:
            return f"{entry.name} has no {figure}"
    if bounds.min_compression is not None and candidate.gzip_bytes == 0:
        return f"{candidate.name} has gzip_bytes 0"
    return None


def _checks(candidate: Candidate, reference: Candidate | None, bounds: GateBounds) -> list[GateCheck]:
    checks = []
    if bounds.max_accuracy_drop is not None and reference is not None:
        drop = (float(reference.accuracy or 0) - float(candidate.accuracy or 0)) * 100
        checks.append(
            GateCheck(
                candidate.name,
                f"accuracy drop <= {bounds.max_accuracy_drop:g} pt",
                f"{drop:.2f} pt ({candidate.accuracy:.2%} vs {reference.name} {reference.accuracy:.2%})",
                drop <= bounds.max_accuracy_drop + 1e-9,
            )
        )
    if bounds.min_compression is not None and reference is not None:
        ratio = float(reference.gzip_bytes or 0) / float(candidate.gzip_bytes or 1)
        checks.append(
            GateCheck(
                candidate.name,
                f"compression >= {bounds.min_compression:g}x (gzip bytes vs {reference.name})",
                f"{ratio:.2f}x",
                ratio >= bounds.min_compression,
            )
        )
    if bounds.max_latency_ms is not None:
        latency = float(candidate.latency_ms or 0)
        checks.append(
            GateCheck(
                candidate.name,
                f"latency <= {bounds.max_latency_ms:g} ms",
                f"{latency:.3f} ms" + ("" if candidate.latency_batch is None else f" (batch {candidate.latency_batch})"),
                latency <= bounds.max_latency_ms,
            )
        )
    return checks


def evaluate_gate(
    results: Results,
    bounds: GateBounds,
    *,
    baseline: Candidate | None = None,
    candidate: str | None = None,
    require: Require = "all",
) -> GateVerdict:
    """Check ``results``' candidates against ``bounds``.

    ``baseline`` replaces the results' own dense baseline (``--baseline``; needed for the accuracy
    and compression bounds of results without one, such as a sweep's). ``candidate`` gates only
    the candidate of that name; otherwise every candidate that has the figures the bounds need is
    gated and the others are listed as skipped. ``require="any"`` passes when at least one gated
    candidate meets every bound (a sweep looking for one good trial).

    Example::

        verdict = evaluate_gate(read_results("demo-out/results.json"), GateBounds(min_compression=4),
                                candidate="pruned compact int8")
    """
    if require not in ("all", "any"):
        raise ConfigError(f"require should be 'all' or 'any', got {require!r}")
    reference = baseline or results.baseline
    if bounds.needs_baseline and reference is None:
        raise ConfigError(
            f"{results.path} has no dense baseline (a {results.source} writes none), so the accuracy-drop and compression "
            "bounds have nothing to compare with; pass --baseline BASELINE.json (results with a baseline, or a file "
            'like {"schema": "prunekit.results/1", "source": "run", "baseline": {"name": "dense", "accuracy": 0.97, '
            '"gzip_bytes": 560000}, "candidates": []})'
        )
    names = [c.name for c in results.candidates]
    if candidate is not None:
        chosen = [c for c in results.candidates if c.name == candidate]
        if not chosen:
            raise ConfigError(f"{results.path} has no candidate {candidate!r}; its candidates are {names}")
    else:
        chosen = list(results.candidates)
    if not chosen:
        raise ConfigError(f"{results.path} holds no candidates to gate (did the command finish any run?)")
    checks: list[GateCheck] = []
    skipped: dict[str, str] = {}
    for entry in chosen:
        reason = _missing(entry, reference, bounds)
        if reason is not None:
            if candidate is not None:
                raise ConfigError(f"cannot gate {candidate!r} in {results.path}: {reason}; drop that bound or measure it")
            skipped[entry.name] = reason
            continue
        checks.extend(_checks(entry, reference, bounds))
    if not checks:
        raise ConfigError(f"no candidate in {results.path} has the figures these bounds need: {'; '.join(skipped.values())}")
    return GateVerdict(checks, require, skipped, results.path)


def check_gate(
    results: str | os.PathLike[str] | Mapping[str, Any],
    *,
    max_accuracy_drop: float | None = None,
    min_compression: float | None = None,
    max_latency_ms: float | None = None,
    candidate: str | None = None,
    require: Require = "all",
    baseline: Candidate | None = None,
) -> GateVerdict:
    """The gate in one call: a results file (or a results dict, such as ``comparison.to_dict()``) against bounds.

    Example::

        verdict = check_gate("run-out/results.json", max_accuracy_drop=1.0, min_compression=4)
        assert verdict.passed, verdict.summary()
    """
    parsed = parse_results(results) if isinstance(results, Mapping) else read_results(results)
    bounds = GateBounds(max_accuracy_drop, min_compression, max_latency_ms)
    return evaluate_gate(parsed, bounds, baseline=baseline, candidate=candidate, require=require)
