"""Sweep outputs: a dense baseline row first, one table for console and report, channel trials shown by channels and MACs."""

import json

import pytest

from prunekit.sweep.digits import DigitsObjective
from prunekit.sweep.report import sweep_report, trials_table
from prunekit.sweep.runner import grid, run_sweep

pytestmark = pytest.mark.slow  # trains and sweeps a small CNN (about a minute on a loaded 2-core machine)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    objective = DigitsObjective.train(
        epochs=1, model_options={"channels": (4, 8), "hidden": 16}, finetune_epochs=1, latency_repeats=0
    )
    out = tmp_path_factory.mktemp("sweep")
    return run_sweep(objective, grid(["one-shot", "channels"], [0.5]), out, progress=False)


def test_the_dense_baseline_is_the_first_row_and_in_results_json(swept):
    rows = swept.rows()
    assert [row["id"] for row in rows] == ["dense", "one-shot@0.5", "channels@0.5"]
    saved = json.loads((swept.out_dir / "results.json").read_text())
    assert saved["dense"]["sparse_macs"] == rows[0]["sparse_macs"]
    assert saved["dense"]["sparsity"] < 0.01
    assert saved["baseline"]["accuracy"] == saved["dense"]["accuracy"]  # the gate schema's baseline is the dense model


def test_channel_trials_show_their_channel_ratio_and_macs_not_a_zero_sparsity(swept):
    table = trials_table(swept)
    by_id = {row[0]: dict(zip(table.columns, row)) for row in table.rows}
    rows = {row["id"]: row for row in swept.rows()}
    assert by_id["dense"]["MACs ×"] == "1.00"
    channels = by_id["channels@0.5"]
    assert channels["target"] == "50% channels" and channels["sparsity"] == "-"
    assert channels["MACs ×"] == f"{rows['channels@0.5']['sparse_macs'] / rows['dense']['sparse_macs']:.2f}"
    assert float(channels["MACs ×"]) < 0.6  # half the channels of both convs and fc1: about a quarter to a half of the MACs
    assert by_id["one-shot@0.5"]["sparsity"] == f"{rows['one-shot@0.5']['sparsity']:.1%}"


def test_the_report_shows_the_console_table(swept):
    paths = sweep_report(swept)
    markdown = paths["md"].read_text()
    assert trials_table(swept).to_markdown().strip() in markdown
