"""Run the generated transformers zoo and write its results where the docs and tests read them.

    python scripts/zoo_report.py                 # every discovered family (tens of minutes on 2 cores)
    python scripts/zoo_report.py vit bert        # only these (merged into the existing record)
    python scripts/zoo_report.py --help          # this text

Runs ``tests.zoo.generated.check_family`` (the same check the zoo test asserts) on each family,
writes ``tests/zoo/generated_status.json`` (status, reason, MACs ratio, seconds per family) and
replaces the block between the ``zoo-report`` markers in ``docs/structured.md`` with the counts
and the table of failing and skipped families, so the docs are never typed by hand.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.zoo.generated import check_family, discover_families  # noqa: E402
from tests.zoo.report import Record, Report, cell, run_families  # noqa: E402

REPORT = Report("tests/zoo/generated_status.json", "docs/structured.md", "zoo-report", "The generated transformers zoo")


def render(records: dict[str, Record]) -> str:
    """The Markdown block for ``docs/structured.md``: counts per modality and the non-passing families."""
    built = {f: r for f, r in records.items() if r["status"] != "skip"}
    passed = [f for f, r in built.items() if r["status"] == "pass"]
    lines = [
        REPORT.start,
        f"The generated zoo discovers **{len(records)}** families from `transformers`' image-, audio- and "
        f"sequence-classification auto mappings; **{len(built)}** build small on CPU, and **{len(passed)}** "
        f"of those ({100 * len(passed) / max(len(built), 1):.0f} %) pass the oracle and the 50 % prune with "
        "its save/load round trip (written by `scripts/zoo_report.py`; do not edit by hand).",
        "",
        "| modality | discovered | built | pass | fail | median MACs ratio at 50 % |",
        "|---|---|---|---|---|---|",
    ]
    for modality in ("vision", "text", "audio"):
        mine = {f: r for f, r in records.items() if r["modality"] == modality}
        built_here = [r for r in mine.values() if r["status"] != "skip"]
        ratios = sorted(r["macs_ratio"] for r in built_here if r["status"] == "pass" and r["macs_ratio"])
        median = f"{ratios[len(ratios) // 2]:.2f}x" if ratios else "-"
        lines.append(
            f"| {modality} | {len(mine)} | {len(built_here)} | "
            f"{sum(r['status'] == 'pass' for r in built_here)} | {sum(r['status'] == 'fail' for r in built_here)} | {median} |"
        )
    failing = {f: r for f, r in records.items() if r["status"] == "fail"}
    if failing:
        lines += ["", "Families that build but fail, and why:", "", "| family | modality | failure |", "|---|---|---|"]
        lines += [f"| {f} | {r['modality']} | {cell(r['reason'], 220)} |" for f, r in failing.items()]
    skipped = {f: r for f, r in records.items() if r["status"] == "skip"}
    if skipped:
        lines += ["", "<details><summary>Families skipped (not built), with the reason</summary>", ""]
        lines += ["| family | modality | reason |", "|---|---|---|"]
        lines += [f"| {f} | {r['modality']} | {cell(r['reason'], 220)} |" for f, r in skipped.items()]
        lines += ["", "</details>"]
    lines.append(REPORT.end)
    return "\n".join(lines)


def _check(family: str) -> tuple[Record, str]:
    start = time.perf_counter()
    outcome = check_family(family)
    record = {
        "modality": outcome.modality,
        "status": outcome.status,
        "reason": outcome.reason,
        "macs_ratio": round(outcome.macs_ratio, 3) if outcome.macs_ratio else None,
        "seconds": round(time.perf_counter() - start, 1),
    }
    return record, f"{family:<36} {outcome.status:<5} {record['seconds']:>6.1f} s  {outcome.reason}"


def main(argv: list[str]) -> None:
    """Check the families named in ``argv`` (all when empty), then write the status file and the docs."""
    records = run_families(argv, __doc__ or "", REPORT, discover_families, _check, render)
    seconds = sum(r["seconds"] for r in records.values())
    print(
        f"{len(records)} families, {seconds:.0f} s in all; wrote {REPORT.status.relative_to(ROOT)} and {REPORT.docs.relative_to(ROOT)}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
