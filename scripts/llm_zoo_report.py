"""Run the generated causal-LM sweep and write its results where the docs and tests read them.

    python scripts/llm_zoo_report.py               # every causal-LM family of transformers (a few minutes on 2 cores)
    python scripts/llm_zoo_report.py llama gpt2    # only these (merged into the existing record)
    python scripts/llm_zoo_report.py --help        # this text

Runs ``tests.zoo.llm_generated.check_llm_family`` (the same check the sweep test asserts) on each
family, writes ``tests/zoo/llm_status.json`` (status, reason, stack, perplexities, depth and width
results, seconds per family) and replaces the block between the ``llm-zoo`` markers in
``docs/llm.md`` with the counts and the table, so the docs are never typed by hand.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.zoo.llm_generated import check_llm_family, discover_causal_families  # noqa: E402
from tests.zoo.report import Record, Report, cell, run_families  # noqa: E402

REPORT = Report("tests/zoo/llm_status.json", "docs/llm.md", "llm-zoo", "Every causal-LM family of transformers")


def render(records: dict[str, Record]) -> str:
    """The Markdown block for ``docs/llm.md``: the counts, then one row per family."""
    counts = {status: sum(r["status"] == status for r in records.values()) for status in ("pass", "fail", "skip")}
    width = sum(r["status"] == "pass" and not r["width"].startswith("none") for r in records.values())
    depth = sum(r["status"] == "pass" and r["depth"].startswith("removed") for r in records.values())
    seconds = sum(r["seconds"] for r in records.values())
    fused = sum(r["status"] == "pass" and bool(r.get("fused_pruned")) for r in records.values())
    experts = sum(r["status"] == "pass" and "experts" in r["dense_weights"] for r in records.values())
    lines = [
        REPORT.start,
        f"The sweep covers **{len(records)}** families (every `model_type` of `transformers`' "
        f"`MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`): **{counts['pass']} pass**, **{counts['fail']} fail**, "
        f"**{counts['skip']} skipped**; of the passing families {depth} also depth-prune a block and {width} width-prune. "
        f"In {fused} passing families fused 3-D expert tensors (and tensor-held routers) are pruned slice by slice "
        "as projections"
        + (
            f"; in {experts} some weights named `experts` stay dense (used other than as per-expert projections; "
            "the share is in the notes). "
            if experts
            else " (weights that stay dense, with their share, are in the notes). "
        )
        + f"The whole sweep took {seconds:.0f} s on 2 CPU cores (written by `scripts/llm_zoo_report.py`; do not edit by hand).",
        "",
        "| family | status | decoder stack | ppl dense | ppl 50 % (mag / wanda / sgpt) | ppl 2:4 (mag / wanda / sgpt) "
        "| width | reason or note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for family, r in records.items():
        ppl = r["ppl"]
        cells = [" / ".join(_number(ppl.get(m, {}).get(p)) for m in ("magnitude", "wanda", "sparsegpt")) for p in ("0.5", "2:4")]
        notes = [r["reason"], "" if r["generate"].startswith("dense") else r["generate"], r.get("fused_pruned", "")]
        notes += [r["dense_weights"]]
        notes += [f"depth {r['depth']}" if r["depth"].startswith("none") else ""]
        note = "; ".join(n for n in notes if n)
        lines.append(
            f"| {family} | {r['status']} | {cell(r['stack'], 160)} | {_number(r['ppl_dense'])} | {cells[0]} | {cells[1]} "
            f"| {cell(r['width'], 160)} | {cell(note, 160)} |"
        )
    lines.append(REPORT.end)
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _check(family: str) -> tuple[Record, str]:
    outcome = check_llm_family(family)
    return outcome.to_record(), f"{family:<28} {outcome.status:<5} {outcome.seconds:>5.1f} s  {outcome.reason}"


def main(argv: list[str]) -> None:
    """Check the families named in ``argv`` (all when empty), then write the status file and the docs."""
    records = run_families(argv, __doc__ or "", REPORT, discover_causal_families, _check, render)
    counts = {s: sum(r["status"] == s for r in records.values()) for s in ("pass", "fail", "skip")}
    print(f"{len(records)} families: {counts}; wrote {REPORT.status.relative_to(ROOT)} and {REPORT.docs.relative_to(ROOT)}")


if __name__ == "__main__":
    main(sys.argv[1:])
