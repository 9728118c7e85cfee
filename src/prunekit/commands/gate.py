"""``prunekit gate RESULTS.json``: fail a CI pipeline when a pruned model crosses an accuracy, size or latency bound.

RESULTS.json is what ``prunekit run``, ``demo`` or ``sweep`` wrote (``results.json`` in their
output directory) or ``prunekit export --json FILE``. Exit status: 0 when the bounds hold, 1 when
one fails, 2 on bad input (missing file, wrong schema, a bound nothing can be compared with).

Example::

    prunekit gate run-out/results.json --max-accuracy-drop 1.0 --min-compression 4 --max-latency-ms 20 --junit gate.xml
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prunekit.core.results import Candidate


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", metavar="RESULTS.json", help="results.json of prunekit run/demo/sweep, or export --json")
    parser.add_argument(
        "--max-accuracy-drop", type=float, metavar="PT", help="largest accuracy drop from the baseline, in percentage points"
    )
    parser.add_argument(
        "--min-compression", type=float, metavar="X", help="smallest baseline/candidate ratio of gzip-compressed bytes"
    )
    parser.add_argument(
        "--max-latency-ms", type=float, metavar="MS", help="largest median latency at the smallest batch measured"
    )
    parser.add_argument(
        "--baseline",
        metavar="BASELINE.json",
        help="results whose dense baseline (or single candidate) the bounds compare with, instead of RESULTS' own",
    )
    parser.add_argument("--candidate", metavar="NAME", help="gate only this candidate (default: every candidate)")
    parser.add_argument(
        "--require",
        choices=["all", "any"],
        default="all",
        help="pass when every candidate meets the bounds (all, default) or at least one does (any: a sweep's best trial)",
    )
    parser.add_argument("--junit", metavar="FILE", help="also write the checks as JUnit XML to FILE, for the CI to show")


def _baseline(path: str) -> Candidate:
    """The reference of ``--baseline``: its dense baseline, or its only candidate."""
    from prunekit.core.results import read_results
    from prunekit.errors import ConfigError

    results = read_results(path)
    if results.baseline is not None:
        return results.baseline
    if len(results.candidates) == 1:
        return results.candidates[0]
    raise ConfigError(
        f"--baseline {path} has no dense baseline and {len(results.candidates)} candidates; give results with a "
        "baseline entry or exactly one candidate"
    )


def run(args: argparse.Namespace) -> int:
    from prunekit.core.results import read_results
    from prunekit.report.gate import GateBounds, evaluate_gate

    bounds = GateBounds(args.max_accuracy_drop, args.min_compression, args.max_latency_ms)
    results = read_results(args.results)
    baseline = _baseline(args.baseline) if args.baseline else None
    verdict = evaluate_gate(results, bounds, baseline=baseline, candidate=args.candidate, require=args.require)
    verdict.table().print()
    for name, reason in verdict.skipped.items():
        print(f"skipped {name}: {reason}")
    if args.junit:
        verdict.write_junit(args.junit)
    print(verdict.summary())
    return 0 if verdict.passed else 1
