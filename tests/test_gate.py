"""``prunekit gate``: bounds checked on the results schema, table, JUnit XML and exit codes."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from prunekit.cli import main
from prunekit.core.results import SCHEMA, Candidate, candidate_name, parse_results, read_results, results_block
from prunekit.errors import ConfigError, CorruptFileError
from prunekit.report.gate import GateBounds, evaluate_gate

BASE = Candidate("dense", accuracy=0.97, size_bytes=1000, gzip_bytes=800, latency_ms=2.0, latency_batch=1)
GOOD = Candidate("gradual 90%", accuracy=0.965, size_bytes=1000, gzip_bytes=100, latency_ms=1.5, latency_batch=1)
BAD = Candidate("gradual 50%", accuracy=0.90, size_bytes=1000, gzip_bytes=400, latency_ms=30.0, latency_batch=1)


def _write(tmp_path, block, name="results.json"):
    path = tmp_path / name
    path.write_text(json.dumps(block))
    return path


def test_candidate_names_show_the_target_as_a_percentage():
    assert [candidate_name("gradual", s) for s in (0.5, 0.9, 0.125, 0.07)] == [
        "gradual 50%",
        "gradual 90%",
        "gradual 12.5%",
        "gradual 7%",
    ]


def test_checks_compute_drop_in_points_compression_of_gzip_bytes_and_latency():
    results = parse_results(results_block("run", BASE, [GOOD]))
    verdict = evaluate_gate(results, GateBounds(max_accuracy_drop=1.0, min_compression=8, max_latency_ms=1.5))
    assert [(c.bound, c.value, c.passed) for c in verdict.checks] == [
        ("accuracy drop <= 1 pt", "0.50 pt (96.50% vs dense 97.00%)", True),
        ("compression >= 8x (gzip bytes vs dense)", "8.00x", True),
        ("latency <= 1.5 ms", "1.500 ms (batch 1)", True),
    ]
    assert verdict.passed


def test_one_failing_bound_fails_the_gate_unless_require_any_finds_a_passing_candidate():
    results = parse_results(results_block("sweep", BASE, [GOOD, BAD]))
    bounds = GateBounds(max_accuracy_drop=1.0, min_compression=4)
    every = evaluate_gate(results, bounds)
    assert not every.passed
    assert [(c.candidate, c.passed) for c in every.checks] == [
        ("gradual 90%", True),
        ("gradual 90%", True),
        ("gradual 50%", False),  # 7 points
        ("gradual 50%", False),  # 2x
    ]
    summary = every.summary()
    assert summary.startswith("gate FAILED (require all): gradual 50%: accuracy drop <= 1 pt, got 7.00 pt")
    assert "gradual 50%: compression >= 4x" in summary and "gradual 90%" not in summary
    assert evaluate_gate(results, bounds, require="any").passed
    assert evaluate_gate(results, bounds, candidate="gradual 90%").passed
    with pytest.raises(ConfigError, match=r"no candidate 'nope'.*gradual 90%"):
        evaluate_gate(results, bounds, candidate="nope")


def test_relative_bounds_without_a_baseline_ask_for_one_and_accept_an_explicit_one():
    results = parse_results(results_block("sweep", None, [GOOD]))
    with pytest.raises(ConfigError, match="--baseline"):
        evaluate_gate(results, GateBounds(min_compression=2))
    assert evaluate_gate(results, GateBounds(max_latency_ms=2)).passed
    assert evaluate_gate(results, GateBounds(min_compression=8), baseline=BASE).passed


def test_candidates_lacking_a_figure_are_skipped_unless_named():
    no_latency = Candidate("one-shot 80%", accuracy=0.96, gzip_bytes=200)
    results = parse_results(results_block("demo", BASE, [no_latency, GOOD]))
    verdict = evaluate_gate(results, GateBounds(max_latency_ms=5))
    assert verdict.skipped == {"one-shot 80%": "one-shot 80% has no latency_ms"}
    assert [c.candidate for c in verdict.checks] == ["gradual 90%"]
    with pytest.raises(ConfigError, match="no latency_ms"):
        evaluate_gate(results, GateBounds(max_latency_ms=5), candidate="one-shot 80%")


@pytest.mark.parametrize(
    ("bounds", "message"),
    [
        ({}, "no bound"),
        ({"min_compression": 0}, "> 0"),
        ({"max_latency_ms": -1}, ">= 0"),
        ({"max_accuracy_drop": float("nan")}, "finite"),
    ],
)
def test_bad_bounds_are_config_errors(bounds, message):
    with pytest.raises(ConfigError, match=message):
        GateBounds(**bounds)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"trials": []}, "schema None"),
        (
            {"schema": SCHEMA, "source": "run", "baseline": None, "candidates": [{"name": "a", "accuracy": 97}]},
            r"\[0\]\.accuracy",
        ),
        ({"schema": SCHEMA, "source": "run", "baseline": None, "candidates": [{"name": "a", "acc": 0.9}]}, "unknown key"),
        ({"schema": SCHEMA, "source": "run", "baseline": None, "candidates": [{"name": "a"}, {"name": "a"}]}, "more than once"),
        ({"schema": SCHEMA, "source": "train", "baseline": None, "candidates": []}, "source"),
    ],
)
def test_malformed_results_name_the_bad_key(data, message):
    with pytest.raises(CorruptFileError, match=message):
        parse_results(data)


def test_junit_xml_has_one_case_per_check_and_a_failure_per_failing_bound(tmp_path):
    results = parse_results(results_block("demo", BASE, [GOOD, BAD, Candidate("no figures")]))
    verdict = evaluate_gate(results, GateBounds(max_accuracy_drop=1.0, max_latency_ms=10))
    verdict.write_junit(tmp_path / "gate.xml")
    suite = ET.parse(tmp_path / "gate.xml").getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("5", "2", "1")
    failures = [case.get("classname") for case in suite.iter("testcase") if case.find("failure") is not None]
    assert failures == ["gradual 50%", "gradual 50%"]
    skipped = [case.get("classname") for case in suite.iter("testcase") if case.find("skipped") is not None]
    assert skipped == ["no figures"]


def test_cli_exit_codes_are_0_pass_1_fail_2_bad_input(tmp_path, capsys):
    path = _write(tmp_path, results_block("run", BASE, [GOOD]))
    assert main(["gate", str(path), "--max-accuracy-drop", "1", "--min-compression", "4"]) == 0
    out = capsys.readouterr().out
    assert "accuracy drop <= 1 pt" in out and "gate passed" in out
    assert main(["gate", str(path), "--min-compression", "9", "--junit", str(tmp_path / "j.xml")]) == 1
    assert "FAIL" in capsys.readouterr().out
    assert ET.parse(tmp_path / "j.xml").getroot().find("testsuite").get("failures") == "1"
    assert main(["gate", str(path)]) == 2  # no bound
    assert main(["gate", str(tmp_path / "missing.json"), "--max-latency-ms", "1"]) == 2
    (tmp_path / "garbage.json").write_text("{not json")
    assert main(["gate", str(tmp_path / "garbage.json"), "--max-latency-ms", "1"]) == 2
    assert "is not a JSON results file" in capsys.readouterr().err


def test_cli_baseline_file_supplies_the_reference(tmp_path):
    sweep = _write(tmp_path, results_block("sweep", None, [GOOD]), "sweep.json")
    assert main(["gate", str(sweep), "--min-compression", "4"]) == 2
    dense = _write(tmp_path, results_block("run", BASE, []), "dense.json")
    assert main(["gate", str(sweep), "--min-compression", "4", "--baseline", str(dense)]) == 0
    assert main(["gate", str(sweep), "--min-compression", "10", "--baseline", str(dense)]) == 1


# ---- real results of the four commands (the fastest settings each has) ----


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--sparsities", "0.5", "--no-progress", "--output", str(out)]) == 0
    return out


def _expected_compression(results_path, name):
    data = json.loads(results_path.read_text())
    row = next(c for c in data["candidates"] if c["name"] == name)
    return data["baseline"]["gzip_bytes"] / row["gzip_bytes"]


@pytest.mark.slow
def test_gate_on_demo_results(demo_out, tmp_path):
    results = demo_out / "results.json"
    data = read_results(results)
    assert data.source == "demo" and data.baseline.name == "dense"
    names = [c.name for c in data.candidates]
    assert names[0] == "gradual 50%" and "pruned compact int8" in names
    ratio = _expected_compression(results, "pruned compact int8")
    assert ratio > 3
    args = ["gate", str(results), "--candidate", "pruned compact int8"]
    assert main([*args, "--min-compression", f"{ratio * 0.99:.6f}", "--max-accuracy-drop", "5"]) == 0
    assert main([*args, "--min-compression", f"{ratio * 1.01:.6f}"]) == 1
    assert main(["gate", str(results), "--max-latency-ms", "10000", "--junit", str(tmp_path / "g.xml")]) == 0
    suite = ET.parse(tmp_path / "g.xml").getroot().find("testsuite")
    no_latency = [c.name for c in data.candidates if c.latency_ms is None]  # the run and the weight files
    assert "gradual 50%" in no_latency and "pruned int8 static" not in no_latency
    assert int(suite.get("tests")) == len(names) and int(suite.get("skipped")) == len(no_latency)


@pytest.mark.slow
def test_gate_on_export_results(demo_out, tmp_path):
    artifacts = demo_out / "artifacts"
    exported = tmp_path / "export.json"
    argv = ["export", str(artifacts / "pruned.safetensors"), "--factory", "prunekit.torch:DigitsCNN"]
    argv += ["--dense", str(artifacts / "dense.safetensors"), "--out", str(tmp_path / "a"), "--json", str(exported)]
    assert main([*argv, "--repeats", "2", "--no-memory"]) == 0
    data = read_results(exported)
    assert data.source == "export" and data.baseline.name == "dense fp32"
    int8 = next(c for c in data.candidates if c.name == "pruned int8 static")
    assert int8.latency_batch == 1 and int8.latency_ms > 0
    ratio = _expected_compression(exported, "pruned int8 static")
    args = ["gate", str(exported), "--candidate", "pruned int8 static"]
    assert main([*args, "--min-compression", f"{ratio * 0.99:.6f}", "--max-latency-ms", "1000"]) == 0
    assert main([*args, "--max-latency-ms", "0"]) == 1


@pytest.mark.slow
def test_gate_on_sweep_results(tmp_path):
    out = tmp_path / "sweep"
    assert main(["sweep", "--quick", "--methods", "one-shot", "--sparsities", "0.5", "--out", str(out)]) == 0
    results = out / "results.json"
    data = read_results(results)
    dense = json.loads(results.read_text())["dense"]
    assert data.source == "sweep" and data.baseline is not None and data.baseline.accuracy == dense["accuracy"]
    trial = json.loads(results.read_text())["trials"][0]["metrics"]
    assert data.candidates[0].latency_ms == trial["latency_ms"]
    assert main(["gate", str(results), "--max-latency-ms", "10000"]) == 0
    assert main(["gate", str(results), "--max-latency-ms", "0"]) == 1
    drop = 100 * (dense["accuracy"] - trial["accuracy"])  # negative when fine-tuning beat the dense model
    bound = max(drop, 0.0) + 0.01  # a bound is never negative (the gate refuses one)
    assert main(["gate", str(results), "--max-accuracy-drop", f"{bound:.4f}"]) == 0  # the sweep's own dense baseline
    if drop >= 0.01:
        assert main(["gate", str(results), "--max-accuracy-drop", f"{drop - 0.01:.4f}"]) == 1
    other = _write(tmp_path, results_block("run", Candidate("dense", accuracy=trial["accuracy"], gzip_bytes=10**9), []))
    assert main(["gate", str(results), "--max-accuracy-drop", "0", "--min-compression", "2", "--baseline", str(other)]) == 0
