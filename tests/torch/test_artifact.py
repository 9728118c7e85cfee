"""Evaluating the ONNX artifact itself: accuracy, latency statistics, sizes, peak memory."""

from __future__ import annotations

import gzip
import os

import numpy as np
import pytest

from prunekit.artifacts.onnx_artifact import file_sizes, onnx_accuracy, time_onnx_files
from prunekit.errors import ConfigError
from prunekit.torch import evaluate_onnx
from tests.torch.pruned_digits import accuracy, digits, pruned_cnn, pruned_onnx, quantized_onnx


@pytest.fixture(scope="module")
def report():
    split = digits()
    return evaluate_onnx(pruned_onnx(), (split.x_test, split.y_test), batch_sizes=(1, 64), warmup=2, repeats=10)


def test_onnx_accuracy_equals_the_pytorch_accuracy(report):
    split = digits()
    assert report.accuracy == pytest.approx(accuracy(pruned_cnn(), split.x_test, split.y_test), abs=1e-9)


def test_latency_has_a_median_and_p90_for_each_batch_size(report):
    assert sorted(report.latency) == [1, 64]
    for size, stats in report.latency.items():
        assert stats.batch_size == size and stats.runs == 10
        assert 0 < stats.median_ms <= stats.p90_ms


def test_batch_64_takes_longer_than_batch_1(report):
    assert report.latency[64].median_ms > report.latency[1].median_ms


def test_sizes_are_the_raw_file_and_its_gzip(report):
    data = pruned_onnx().read_bytes()
    assert report.size_bytes == os.path.getsize(pruned_onnx())
    assert report.gzip_bytes == len(gzip.compress(data, compresslevel=9, mtime=0))
    assert report.gzip_bytes < 0.3 * report.size_bytes  # 90% zeros compress


def test_peak_memory_is_measured_and_plausible(report):
    assert report.peak_memory_bytes is not None
    assert 0 < report.peak_memory_bytes < 512 * 2**20


def test_report_serialises_to_plain_json_types(report):
    import json

    value = json.loads(json.dumps(report.to_dict()))
    assert value["latency"]["64"]["runs"] == 10 and value["path"] == str(pruned_onnx())


def test_interleaved_latency_times_every_file_at_every_batch_size():
    stats = time_onnx_files(
        {"fp32": pruned_onnx(), "int8": quantized_onnx("static")}, digits().x_test, batch_sizes=(1, 8), warmup=1, repeats=3
    )
    assert {label: sorted(per) for label, per in stats.items()} == {"fp32": [1, 8], "int8": [1, 8]}


def test_latency_without_data_uses_random_inputs_of_the_model_shape():
    stats = time_onnx_files({"m": pruned_onnx()}, None, batch_sizes=(4,), warmup=0, repeats=2)
    assert stats["m"][4].runs == 2


def test_accuracy_with_mismatched_labels_raises_config_error():
    with pytest.raises(ConfigError, match="as many labels as samples"):
        onnx_accuracy(pruned_onnx(), digits().x_test, digits().y_test[:5])


def test_missing_file_raises_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        evaluate_onnx(tmp_path / "none.onnx")


def test_file_sizes_of_incompressible_bytes(tmp_path):
    path = tmp_path / "noise.bin"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    raw, packed = file_sizes(path)
    assert raw == 4096 and packed > 4096
