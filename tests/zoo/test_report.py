"""The zoo report scripts and their shared helper (``tests/zoo/report.py``): the docs blocks are what the
scripts render from the committed status files, and a run merges, sorts and writes both files."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.zoo.report import Report, cell, check_arguments, run_families

ROOT = Path(__file__).resolve().parents[2]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["zoo_report", "llm_zoo_report"])
def test_the_docs_block_is_what_the_script_renders_from_the_committed_status_file(name):
    script = _script(name)
    report = script.REPORT
    text = report.docs.read_text(encoding="utf-8")
    block = report.start + text.split(report.start, 1)[1].split(report.end, 1)[0] + report.end
    assert script.render(report.load()) == block


def _report(tmp_path: Path, docs_text: str) -> Report:
    docs = tmp_path / "page.md"
    docs.write_text(docs_text, encoding="utf-8")
    return Report(tmp_path / "status.json", docs, "r", "The zoo")


def _render(records):
    return "\n".join(["<!-- r:start -->", *(f"{f}: {r['status']}" for f, r in records.items()), "<!-- r:end -->"])


def _check(family):
    return {"status": "pass" if family != "bad" else "fail"}, f"checked {family}"


def test_naming_families_merges_them_into_the_record_and_rewrites_only_the_marked_block(tmp_path, capsys):
    report = _report(tmp_path, "intro\n<!-- r:start -->\nold\n<!-- r:end -->\noutro\n")
    report.status.write_text(json.dumps({"zeta": {"status": "pass"}, "bad": {"status": "pass"}}), encoding="utf-8")
    records = run_families(["bad", "alpha"], "usage", report, lambda: ["never"], _check, _render)
    assert list(records) == ["alpha", "bad", "zeta"]  # merged with the recorded zeta, sorted
    assert json.loads(report.status.read_text(encoding="utf-8")) == records
    assert report.docs.read_text(encoding="utf-8") == (
        "intro\n<!-- r:start -->\nalpha: pass\nbad: fail\nzeta: pass\n<!-- r:end -->\noutro\n"
    )
    assert capsys.readouterr().out.splitlines() == ["checked bad", "checked alpha"]


def test_a_full_run_replaces_the_record_and_a_page_without_markers_gets_a_section(tmp_path):
    report = _report(tmp_path, "intro\n")
    report.status.write_text(json.dumps({"zeta": {"status": "pass"}}), encoding="utf-8")
    records = run_families([], "usage", report, lambda: ["b", "a"], _check, _render)
    assert list(records) == ["a", "b"]
    assert (
        report.docs.read_text(encoding="utf-8") == "intro\n\n## The zoo\n\n<!-- r:start -->\na: pass\nb: pass\n<!-- r:end -->\n"
    )


def test_help_exits_cleanly_and_an_unknown_option_is_refused_before_anything_runs(capsys):
    with pytest.raises(SystemExit) as done:
        check_arguments(["--help"], "how to use it")
    assert done.value.code == 0 and "how to use it" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"unknown option in \['vit', '--fast'\]; pass family names only"):
        check_arguments(["vit", "--fast"], "how to use it")
    check_arguments(["vit", "bert"], "how to use it")  # family names only: no exit


def test_a_table_cell_escapes_pipes_and_newlines_and_is_cut_to_its_width():
    assert cell("a|b\nc", 160) == "a\\|b c"
    assert cell("x" * 300, 220) == "x" * 220
