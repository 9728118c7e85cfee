"""The built-in demo: accuracy at 90% sparsity, its outputs, and its command line."""

import json

import pytest

from prunekit.cli import main
from prunekit.demo import run_demo


@pytest.fixture(scope="module")
def full_demo(tmp_path_factory):
    """One full (not --quick) demo run at 90% sparsity, with artifacts, shared by the tests below."""
    output = tmp_path_factory.mktemp("demo")
    return output, run_demo(sparsities=[0.9], output_dir=output, progress=False)


@pytest.mark.slow
def test_demo_at_90_percent_sparsity_stays_within_1_5_points_of_dense(full_demo):
    _, results = full_demo
    dense, pruned = results["dense"]["accuracy"], results["runs"][0]["accuracy"]
    print(f"dense {dense:.4f}, 90% sparse {pruned:.4f}")
    assert dense >= 0.95
    assert pruned >= dense - 0.015
    assert results["runs"][0]["achieved_sparsity"] == pytest.approx(0.9, abs=1e-5)
    assert results["runs"][0]["gzip_bytes"] < 0.3 * results["dense"]["gzip_bytes"]


@pytest.mark.slow
def test_demo_ends_with_deployable_artifacts_of_the_sparsest_run(full_demo):
    tmp_path, results = full_demo
    rows = {row["name"]: row for row in results["artifacts"]["rows"]}
    assert {"dense fp32", "pruned fp32", "pruned int8 static", "pruned compact int8"} <= set(rows)
    assert rows["pruned int8 static"]["accuracy"] >= rows["pruned fp32"]["accuracy"] - 0.01
    assert rows["pruned compact int8"]["size_ratio"] >= 16
    for row in rows.values():
        assert (tmp_path / "artifacts" / row["path"].split("/")[-1]).is_file()
    assert "Deployable artifacts" in (tmp_path / "results.md").read_text()


@pytest.mark.slow
def test_demo_writes_a_self_contained_html_report(full_demo):
    output, _ = full_demo
    html = (output / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 1
    assert (output / "report.json").is_file() and (output / "report.md").is_file()


def test_demo_command_writes_markdown_and_json(tmp_path, capsys):
    code = main(
        [
            "demo",
            "--quick",
            "--sparsities",
            "0.5,0.8",
            "--method",
            "all",
            "--no-progress",
            "--no-export",
            "--output",
            str(tmp_path),
        ]
    )
    assert code == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["dense"]) >= {"accuracy", "size_bytes", "gzip_bytes"}
    assert "artifacts" not in results
    from prunekit.methods import method_names

    unstructured = method_names(kind="unstructured", framework="torch")  # "all": every unstructured method
    assert {"gradual", "one-shot", "iterative"} <= set(unstructured)
    assert [(r["method"], r["sparsity"]) for r in results["runs"]] == [(m, s) for m in unstructured for s in (0.5, 0.8)]
    for run in results["runs"]:
        assert set(run) >= {"method", "sparsity", "accuracy", "size_bytes", "gzip_bytes"}
        assert run["achieved_sparsity"] == pytest.approx(run["sparsity"], abs=1e-5)
    markdown = (tmp_path / "results.md").read_text()
    assert markdown.count("\n| ") == 1 + 1 + len(results["runs"])  # header, dense, one row per run
    assert "one-shot" in capsys.readouterr().out


def test_demo_command_rejects_bad_sparsities(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--sparsities", "0.5,1.2"])
    assert "sparsities should be in [0, 1)" in capsys.readouterr().err


def test_structured_demo_reports_a_physically_smaller_model(tmp_path):
    code = main(
        [
            "demo",
            "--method",
            "structured",
            "--quick",
            "--sparsities",
            "0.5",
            "--no-progress",
            "--no-export",
            "--output",
            str(tmp_path),
        ]
    )
    assert code == 0
    results = json.loads((tmp_path / "results.json").read_text())
    dense, (run,) = results["dense"], results["runs"]
    assert run["method"] == "structured" and run["sparsity"] == 0.5
    assert run["params"] < dense["params"] / 3  # half the channels of both convs and fc1
    assert run["macs"] < dense["macs"] / 3
    assert run["size_bytes"] < dense["size_bytes"] / 3  # the raw file shrinks too: nothing is masked
    assert run["latency_ms_b64"] > 0 and dense["latency_ms_b64"] > 0
    assert "Structured pruning: physically smaller model" in (tmp_path / "results.md").read_text()
