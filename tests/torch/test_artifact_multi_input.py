"""Multi-input ONNX artifacts end to end: a tiny BERT classifier taking input_ids + attention_mask.

The model is built from a ``transformers`` config (2 layers, hidden 32, vocabulary 100, no
download), exported with a dict example (keyword inputs) and a dynamic sequence length, then
quantized, evaluated and compared with dict test data, as users deploying a transformer do.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from prunekit.artifacts.onnx_artifact import onnx_accuracy, time_onnx_files
from prunekit.artifacts.ort import session
from prunekit.errors import ConfigError
from prunekit.torch import Pruner, compare_artifacts, evaluate_onnx, export_onnx, quantize_onnx
from prunekit.torch.deploy.compare import torch_accuracy

SAMPLES, SEQUENCE, CLASSES = 64, 12, 3
SEQUENCE_DIMS = {"input_ids": {1: "sequence"}, "attention_mask": {1: "sequence"}}
INT8_ACCURACY_TOLERANCE = 0.05  # dynamic int8 may flip up to 3 of 64 predictions of this random-weight model


@functools.cache
def _bert_state() -> dict[str, torch.Tensor]:
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(_config()).eval().state_dict()


def _config():
    from transformers import BertConfig

    return BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=CLASSES,
    )


def bert() -> torch.nn.Module:
    """A fresh copy of the same randomly initialised tiny BERT sequence classifier (eval mode)."""
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification(_config())
    model.load_state_dict(_bert_state())
    return model.eval()


@functools.cache
def _data() -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 100, (SAMPLES, SEQUENCE))
    mask = np.ones((SAMPLES, SEQUENCE), dtype=np.int64)
    mask[::3, 8:] = 0  # every third sequence is padded after 8 tokens
    x = {"input_ids": ids, "attention_mask": mask}
    with torch.no_grad():
        predicted = bert()(**{k: torch.from_numpy(v) for k, v in x.items()}).logits.argmax(-1).numpy()
    y = np.where(np.arange(SAMPLES) % 2 == 0, predicted, rng.integers(0, CLASSES, SAMPLES))  # neither 0 nor 1
    return x, y


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    x, _ = _data()
    example = {name: torch.from_numpy(array[:2]) for name, array in x.items()}
    return export_onnx(bert(), example, tmp_path_factory.mktemp("bert") / "bert.onnx", dynamic_dims=SEQUENCE_DIMS)


@pytest.fixture(scope="module")
def report(exported):
    return evaluate_onnx(exported.path, _data(), batch_sizes=(1, 8), warmup=1, repeats=5)


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    x, y = _data()
    pruned = bert()
    pruner = Pruner(pruned, 0.5)
    pruner.prune()
    pruner.strip()
    return compare_artifacts(
        bert(), pruned, (x, y), x, tmp_path_factory.mktemp("compare"), batch_sizes=(1, 8), warmup=1, repeats=3
    )


def test_dict_example_names_the_onnx_inputs_and_the_model_output_names_the_outputs(exported):
    assert exported.input_names == ("input_ids", "attention_mask")
    assert exported.output_names == ("logits",)
    assert exported.check.max_abs_error < 1e-4 and exported.check.batch_sizes == (2, 3)


@pytest.mark.parametrize("batch, length", [(5, SEQUENCE), (3, 7)])
def test_onnx_logits_equal_pytorch_at_other_batch_sizes_and_sequence_lengths(exported, batch, length):
    x, _ = _data()
    inputs = {name: array[:batch, :length] for name, array in x.items()}
    got = session(exported.path).run(None, inputs)[0]
    with torch.no_grad():
        want = bert()(**{k: torch.from_numpy(v) for k, v in inputs.items()}).logits.numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_accuracy_on_dict_data_equals_the_pytorch_accuracy(report):
    x, y = _data()
    expected = torch_accuracy(bert(), x, y)
    assert 0.5 <= expected < 1.0  # half the labels are the model's predictions, half random
    assert report.accuracy == expected


def test_tuple_data_in_input_order_gives_the_same_accuracy(exported, report):
    x, y = _data()
    assert onnx_accuracy(exported.path, (x["input_ids"], x["attention_mask"]), y) == report.accuracy


def test_latency_has_rows_for_batch_sizes_1_and_8(report):
    assert sorted(report.latency) == [1, 8]
    for size, stats in report.latency.items():
        assert stats.batch_size == size and stats.runs == 5
        assert 0 < stats.median_ms <= stats.p90_ms


def test_peak_memory_exceeds_the_weights_in_the_file(report):
    assert report.peak_memory_bytes is not None
    assert report.size_bytes < report.peak_memory_bytes < 512 * 2**20


def test_dynamic_int8_artifact_evaluates_within_the_accuracy_tolerance(exported, report, tmp_path):
    quantized = quantize_onnx(exported.path, tmp_path / "bert.int8.onnx", "dynamic")
    int8 = evaluate_onnx(quantized.path, _data(), batch_sizes=(8,), warmup=1, repeats=3, measure_memory=False)
    assert int8.size_bytes < report.size_bytes
    assert abs(int8.accuracy - report.accuracy) <= INT8_ACCURACY_TOLERANCE


def test_static_int8_calibrates_on_a_dict_of_arrays(exported, report, tmp_path):
    x, y = _data()
    quantized = quantize_onnx(exported.path, tmp_path / "bert.static.onnx", "static", calibration_data=x)
    assert abs(onnx_accuracy(quantized.path, x, y) - report.accuracy) <= INT8_ACCURACY_TOLERANCE


def test_without_data_a_dynamic_sequence_length_raises_config_error_asking_for_data(exported):
    with pytest.raises(ConfigError, match=r"input 'input_ids' has the dynamic shape \(batch, \?\).*pass data"):
        evaluate_onnx(exported.path, batch_sizes=(1,), warmup=0, repeats=1)


def test_without_data_a_fixed_sequence_model_is_timed_on_generated_inputs(comparison):
    path = comparison.row("pruned fp32").path  # exported by compare_artifacts: fixed sequence length 12
    generated = evaluate_onnx(path, batch_sizes=(4,), warmup=0, repeats=2)
    assert generated.accuracy is None and generated.latency[4].runs == 2
    assert generated.peak_memory_bytes > generated.size_bytes


def test_inputs_without_labels_are_timed_without_accuracy(exported):
    x, _ = _data()
    timed = evaluate_onnx(exported.path, (x, None), batch_sizes=(2,), warmup=0, repeats=2, measure_memory=False)
    assert timed.accuracy is None and timed.latency[2].runs == 2


def test_data_missing_an_input_raises_config_error_naming_it(exported):
    x, y = _data()
    with pytest.raises(ConfigError, match=r"lacks the model input\(s\) \['attention_mask'\]"):
        onnx_accuracy(exported.path, {"input_ids": x["input_ids"]}, y)
    with pytest.raises(ConfigError, match="one array but the model has 2 inputs"):
        time_onnx_files({"bert": exported.path}, x["input_ids"], batch_sizes=(1,), repeats=1)


def test_inputs_with_different_sample_counts_raise_config_error(exported):
    x, y = _data()
    with pytest.raises(ConfigError, match="same number of samples.*'attention_mask': 10"):
        onnx_accuracy(exported.path, {"input_ids": x["input_ids"], "attention_mask": x["attention_mask"][:10]}, y)


def test_input_names_or_bad_dynamic_dims_with_a_dict_example_raise_config_error(tmp_path):
    x, _ = _data()
    example = {name: torch.from_numpy(array[:2]) for name, array in x.items()}
    with pytest.raises(ConfigError, match="keys are the model's keyword arguments"):
        export_onnx(bert(), example, tmp_path / "m.onnx", input_names=["a", "b"])
    with pytest.raises(ConfigError, match=r"dynamic_dims names the input\(s\) \['ids'\]"):
        export_onnx(bert(), example, tmp_path / "m.onnx", dynamic_dims={"ids": {1: "sequence"}})
    with pytest.raises(ConfigError, match="axis 0 is the batch"):
        export_onnx(bert(), example, tmp_path / "m.onnx", dynamic_dims={"input_ids": {0: "rows"}})
    assert not (tmp_path / "m.onnx").exists()


def test_compare_artifacts_lists_every_file_of_a_multi_input_model(comparison):
    names = [row.name for row in comparison.rows]
    assert names == [
        "dense fp32",
        "pruned fp32",
        "pruned int8 dynamic",
        "pruned int8 static",
        "dense fp32 state_dict",
        "pruned fp32 state_dict",
        "pruned compact fp32",
        "pruned compact int8",
    ]
    assert all(row.path.is_file() for row in comparison.rows)
    assert comparison.row("dense fp32").accuracy == comparison.torch_accuracy["dense"]
    assert comparison.row("pruned fp32").accuracy == comparison.torch_accuracy["pruned"]
    assert all(comparison.row(name).peak_memory_bytes > 0 for name in names[:4])
    assert sorted(comparison.row("pruned int8 static").latency) == [1, 8]


def test_export_command_reads_one_npz_array_per_model_input(tmp_path, capsys):
    import json

    from safetensors.torch import save_file

    from prunekit.cli import main

    x, y = _data()
    save_file(bert().state_dict(), str(tmp_path / "bert.safetensors"))
    np.savez(
        tmp_path / "data.npz",
        y_test=y,
        **{f"{split}.{name}": array for name, array in x.items() for split in ("x_test", "x_calib")},
    )
    code = main(
        [
            "export",
            str(tmp_path / "bert.safetensors"),
            "--factory",
            f"{__name__}:bert",
            "--data",
            str(tmp_path / "data.npz"),
            "--out",
            str(tmp_path / "out"),
            "--json",
            str(tmp_path / "table.json"),
            "--repeats",
            "1",
            "--no-memory",
        ]
    )
    assert code == 0, capsys.readouterr().err
    rows = {row["name"]: row for row in json.loads((tmp_path / "table.json").read_text())["rows"]}
    assert rows["pruned fp32"]["accuracy"] == torch_accuracy(bert(), x, y)
    assert (tmp_path / "out" / "pruned.int8-static.onnx").is_file()
