"""prunekit.demo.keras_demo.run_demo: the shape the demo command reads, and files written atomically."""

import json

import pytest

from prunekit.demo.keras_demo import run_demo


def test_quick_demo_returns_dense_and_one_run_per_sparsity(tmp_path):
    results = run_demo(output_dir=tmp_path, quick=True, sparsities=(0.9,))
    assert results["framework"] == "keras"
    assert set(results["dense"]) >= {"accuracy", "size_bytes", "gzip_bytes"}
    assert [(r["method"], r["sparsity"]) for r in results["runs"]] == [("gradual", 0.9)]
    for run in results["runs"]:
        assert run["achieved_sparsity"] == pytest.approx(run["sparsity"], abs=1e-5)
        assert run["size_bytes"] == results["dense"]["size_bytes"]
    assert results["runs"][0]["gzip_bytes"] < 0.3 * results["dense"]["gzip_bytes"]
    assert results["dense"]["accuracy"] >= 0.9
    assert json.loads((tmp_path / "results.json").read_text()) == results
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense.keras", "gradual-90.keras", "results.json"]


def test_demo_refuses_an_unknown_method():
    from prunekit import ConfigError

    with pytest.raises(ConfigError, match="unknown keras method 'lottery'"):
        run_demo(methods=("lottery",))


def test_demo_command_runs_the_keras_demo_with_the_chosen_method(tmp_path):
    from prunekit.cli import main

    code = main(
        [
            "demo",
            "--framework",
            "keras",
            "--method",
            "one-shot",
            "--sparsities",
            "0.5",
            "--quick",
            "--no-progress",
            "--output",
            str(tmp_path),
        ]
    )
    assert code == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["framework"] == "keras"
    assert [(r["method"], r["sparsity"]) for r in results["runs"]] == [("one-shot", 0.5)]
    assert results["runs"][0]["achieved_sparsity"] == pytest.approx(0.5, abs=1e-5)
    assert "prunekit demo (keras)" in (tmp_path / "results.md").read_text()
