"""compare_artifacts: one call from a dense and a pruned model to every artifact and the comparison table."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from prunekit.torch import compare_artifacts
from tests.torch.pruned_digits import dense_cnn, digits, pruned_cnn

ONNX_ROWS = ["dense fp32", "pruned fp32", "pruned int8 dynamic", "pruned int8 static"]
WEIGHT_ROWS = ["dense fp32 state_dict", "pruned fp32 state_dict", "pruned compact fp32", "pruned compact int8"]


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    split = digits()
    out = tmp_path_factory.mktemp("artifacts")
    return compare_artifacts(
        dense_cnn(),
        pruned_cnn(),
        (split.x_test, split.y_test),
        split.x_val,
        out,
        batch_sizes=(1, 64),
        warmup=2,
        repeats=8,
        measure_memory=False,
        plan={"note": "unstructured 90%"},
    )


def test_rows_are_the_onnx_artifacts_then_the_weight_files(comparison):
    assert [row.name for row in comparison.rows] == ONNX_ROWS + WEIGHT_ROWS
    assert all(row.path.is_file() for row in comparison.rows)


def test_compact_files_meet_the_size_targets_against_the_dense_file(comparison):
    assert 1 / comparison.size_ratio("pruned compact fp32") <= 0.16
    assert 1 / comparison.size_ratio("pruned compact int8") <= 0.06
    assert comparison.size_ratio("pruned fp32 state_dict") == pytest.approx(1.0)  # zeros alone do not shrink a file


def test_every_artifact_keeps_the_accuracy_within_one_point(comparison):
    reference = comparison.torch_accuracy["pruned"]
    for name in ONNX_ROWS[1:] + WEIGHT_ROWS[1:]:
        assert comparison.row(name).accuracy >= reference - 0.01, name


def test_speedups_are_relative_to_dense_fp32(comparison):
    assert comparison.speedup("dense fp32", 64) == pytest.approx(1.0)
    dense = comparison.row("dense fp32").latency[64].median_ms
    static = comparison.row("pruned int8 static").latency[64].median_ms
    assert comparison.speedup("pruned int8 static", 64) == pytest.approx(dense / static)
    assert comparison.speedup("pruned compact int8", 64) is None


def test_fp32_onnx_rows_carry_the_ort_vs_pytorch_error(comparison):
    assert comparison.row("dense fp32").max_abs_error < 1e-4
    assert comparison.row("pruned fp32").max_abs_error < 1e-4


def test_table_prints_every_row_with_rich(comparison):
    buffer = io.StringIO()
    comparison.print(Console(file=buffer, width=400))
    text = " ".join(buffer.getvalue().split())  # the caption wraps to the table's width
    for name in ONNX_ROWS + WEIGHT_ROWS:
        assert name in text
    assert "speedup" in text and "max abs error" in text


def test_to_dict_is_json_with_sizes_latency_and_speedups(comparison):
    value = json.loads(json.dumps(comparison.to_dict()))
    rows = {row["name"]: row for row in value["rows"]}
    assert rows["pruned int8 static"]["latency_ms"]["64"]["runs"] == 8
    assert rows["pruned compact int8"]["size_bytes"] == comparison.row("pruned compact int8").size_bytes
    assert rows["pruned int8 static"]["speedup"]["64"] == pytest.approx(comparison.speedup("pruned int8 static", 64))


def test_test_data_with_mismatched_labels_raises_config_error_before_writing(tmp_path):
    from prunekit.errors import ConfigError

    split = digits()
    with pytest.raises(ConfigError, match="as many labels as inputs"):
        compare_artifacts(None, pruned_cnn(), (split.x_test, split.y_test[:3]), split.x_val, tmp_path / "out")
    assert not (tmp_path / "out").exists()
