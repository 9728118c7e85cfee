"""``summarize_onnx`` and ``prunekit inspect model.onnx``: an exported file's rows agree with the PyTorch model's.

Tolerance of the totals: MACs agree exactly, since both counters use the same formulas and both
count 0 for normalisation, activations and elementwise ops. Params differ by exactly the
BatchNorm parameters: the exporter folds BatchNorm into the conv before it (so the conv's stored
weight and bias are the folded ones, same shapes and same zeros) and the file keeps no BN row.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
from torch import nn  # noqa: E402

from prunekit.artifacts.onnx_summary import summarize_onnx  # noqa: E402
from prunekit.cli import main  # noqa: E402
from prunekit.errors import ConfigError  # noqa: E402
from prunekit.torch import DigitsCNN, count_macs, export_onnx, prune_unstructured, quantize_onnx, summarize  # noqa: E402

CNN_LAYERS = ["conv1", "conv2", "fc1", "fc2"]
SEQ, WIDTH, HEADS = 5, 16, 2


class TinyTransformer(nn.Module):
    """A linear embedding, multi-head self-attention and a linear head over a (batch, seq, 8) input."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, WIDTH)
        self.attn = nn.MultiheadAttention(WIDTH, HEADS, batch_first=True)
        self.head = nn.Linear(WIDTH, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        h, _ = self.attn(h, h, h, need_weights=False)
        return self.head(h)


def _transformer() -> TinyTransformer:
    torch.manual_seed(0)
    model = TinyTransformer().eval()
    with torch.no_grad():  # MHA starts with zero biases, which the exporter would drop from the file
        for parameter in model.parameters():
            parameter.normal_(0, 0.2)
    return model


def _numbers(summary) -> list[tuple[str, int, int, int, int]]:
    """Each row's numbers without its name (node names differ between exports of the same model)."""
    return [(row.type, row.params, row.nonzeros, row.macs, row.sparse_macs) for row in summary.layers]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    work = tmp_path_factory.mktemp("inspect_onnx")
    torch.manual_seed(0)
    cnn = DigitsCNN().eval()
    pruned = prune_unstructured(DigitsCNN().eval(), 0.9)
    transformer = _transformer()
    paths = {
        "cnn": work / "cnn.onnx",
        "pruned": work / "pruned.onnx",
        "external": work / "external.onnx",
        "transformer": work / "transformer.onnx",
        "dynamic": work / "dynamic.onnx",
        "int8": work / "pruned.int8.onnx",
    }
    export_onnx(cnn, torch.zeros(2, 1, 8, 8), paths["cnn"])
    export_onnx(cnn, torch.zeros(2, 1, 8, 8), paths["external"], external_data=True)
    export_onnx(pruned, torch.zeros(2, 1, 8, 8), paths["pruned"])
    quantize_onnx(paths["pruned"], paths["int8"], "static", calibration_data=torch.randn(16, 1, 8, 8))
    export_onnx(transformer, torch.randn(2, SEQ, 8), paths["transformer"])
    export_onnx(transformer, torch.randn(2, SEQ, 8), paths["dynamic"], dynamic_dims={"input": {1: "seq"}})
    return {"paths": paths, "cnn": cnn, "pruned": pruned, "transformer": transformer}


def test_cnn_rows_have_the_params_and_macs_of_the_torch_layers(files):
    cnn = files["cnn"]
    report = count_macs(cnn, torch.zeros(1, 1, 8, 8))
    summary = summarize_onnx(files["paths"]["cnn"])
    assert [layer.type for layer in summary.layers] == ["Conv", "Conv", "Gemm", "Gemm"]
    rows = dict(zip(CNN_LAYERS, summary.layers))
    for name, row in rows.items():
        assert (row.params, row.macs) == (report.per_layer_params[name], report.per_layer[name]), name
    assert rows["conv2"].macs == 64 * 8 * 8 * 32 * 9
    assert summary.macs == report.total == 1_330_432
    batch_norm = sum(p.numel() for m in (cnn.bn1, cnn.bn2) for p in m.parameters())
    assert summary.params == report.params - batch_norm == 151_306


def test_transformer_rows_count_projections_and_attention_like_torch(files):
    model = files["transformer"]
    report = count_macs(model, torch.zeros(1, SEQ, 8))
    summary = summarize_onnx(files["paths"]["transformer"])
    assert [layer.type for layer in summary.layers] == ["MatMul", "MatMul", "MatMul", "MatMul", "Gemm", "MatMul"]
    embed, in_proj, scores, mix, out_proj, head = summary.layers
    assert (embed.params, embed.macs) == (report.per_layer_params["embed"], report.per_layer["embed"]) == (144, 640)
    assert (head.params, head.macs) == (report.per_layer_params["head"], report.per_layer["head"]) == (68, 320)
    assert in_proj.params == report.per_layer_params["attn"] == 3 * WIDTH * WIDTH + 3 * WIDTH
    assert out_proj.params == report.per_layer_params["attn.out_proj"] == WIDTH * WIDTH + WIDTH
    head_dim = WIDTH // HEADS
    assert scores.params == mix.params == 0
    assert scores.macs == mix.macs == HEADS * SEQ * head_dim * SEQ  # M x K x N per head
    assert in_proj.macs + scores.macs + mix.macs + out_proj.macs == report.per_layer["attn"]
    assert summary.macs == report.total == 6_880


def test_a_dynamic_sequence_length_takes_its_size_from_input_shapes(files):
    model = files["transformer"]
    dynamic = files["paths"]["dynamic"]
    with pytest.raises(ConfigError, match=r"input 'input' has the dynamic shape \(batch, seq, 8\).*input_shapes"):
        summarize_onnx(dynamic)
    assert _numbers(summarize_onnx(dynamic, (SEQ, 8))) == _numbers(summarize_onnx(files["paths"]["transformer"]))
    assert summarize_onnx(dynamic, {"input": (7, 8)}).macs == count_macs(model, torch.zeros(1, 7, 8)).total


def test_a_dynamo_exported_bert_takes_its_sequence_length_from_input_shapes(tmp_path):
    """The dynamo exporter computes a BERT's position ids through Shape/Slice/Expand chains that
    onnx's shape inference cannot follow; the summary still finds every shape and counts MACs exactly."""
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    bert = transformers.BertModel(config).eval()
    example = {"input_ids": torch.zeros(2, 12, dtype=torch.long), "attention_mask": torch.ones(2, 12, dtype=torch.long)}
    path = tmp_path / "bert.onnx"
    export_onnx(bert, example, path, dynamic_dims={"input_ids": {1: "sequence"}, "attention_mask": {1: "sequence"}})
    for length in (12, 20):
        one = {name: torch.ones(1, length, dtype=torch.long) for name in example}
        assert summarize_onnx(path, input_shapes=(length,)).macs == count_macs(bert, one).total


def test_the_cli_names_the_dynamic_input_without_input_shape(files, capsys):
    assert main(["inspect", str(files["paths"]["dynamic"])]) == 2
    assert "input 'input' has the dynamic shape" in capsys.readouterr().err


def test_a_pruned_export_keeps_the_torch_sparsity_and_sparse_macs_exactly(files):
    pruned = files["pruned"]
    torch_summary = summarize(pruned, torch.zeros(1, 1, 8, 8))
    rows = dict(zip(CNN_LAYERS, summarize_onnx(files["paths"]["pruned"]).layers))
    for name, row in rows.items():
        expected = torch_summary.layer(name)
        assert (row.nonzeros, row.sparsity, row.sparse_macs) == (expected.nonzeros, expected.sparsity, expected.sparse_macs), name
    assert rows["fc1"].nonzeros == 1024 * 128 - round(0.9 * 1024 * 128) + 128  # 90% of the weight, no bias pruned


def test_a_static_int8_file_keeps_every_rows_params_nonzeros_and_macs(files):
    float_rows = summarize_onnx(files["paths"]["pruned"])
    int8_rows = summarize_onnx(files["paths"]["int8"])
    assert _numbers(int8_rows) == _numbers(float_rows)
    assert any(node.op_type == "DequantizeLinear" for node in onnx.load(str(files["paths"]["int8"])).graph.node)


def test_a_dynamic_int8_transformer_keeps_every_rows_params_and_macs(files, tmp_path):
    path = tmp_path / "transformer.int8.onnx"
    quantize_onnx(files["paths"]["transformer"], path, "dynamic")
    int8 = summarize_onnx(path)
    assert [row.type for row in int8.layers] == [
        "MatMulInteger",
        "MatMulInteger",
        "MatMul",
        "MatMul",
        "MatMulInteger",
        "MatMulInteger",
    ]
    float_rows = summarize_onnx(files["paths"]["transformer"]).layers
    assert [(r.params, r.macs) for r in int8.layers] == [(r.params, r.macs) for r in float_rows]


def test_an_int8_weight_equal_to_its_per_column_zero_point_is_a_zero(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    weight = np.array([[128, 3], [5, 3]], np.uint8)  # column 0 has zero point 128, column 1 has 3
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["x", "w", "", "w_zero"], ["y"], name="fc")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, ["batch", 2])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.array([128, 3], np.uint8), "w_zero")],
    )
    path = tmp_path / "int.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    row = summarize_onnx(path).layer("fc")
    assert (row.type, row.params, row.nonzeros, row.macs, row.sparse_macs) == ("MatMulInteger", 4, 1, 4, 1)


def test_an_external_data_file_reads_its_weights_from_the_data_file(files, tmp_path):
    external = files["paths"]["external"]
    assert external.with_name("external.onnx.data").is_file()
    assert summarize_onnx(external).to_dict() == summarize_onnx(files["paths"]["cnn"]).to_dict()
    out = tmp_path / "external.json"
    assert main(["inspect", str(external), "--batch-sizes", "1", "--json", str(out)]) == 0
    sizes = json.loads(out.read_text())["sizes"]
    assert sizes["files"] == ["external.onnx", "external.onnx.data"]
    assert sizes["raw_bytes"] == external.stat().st_size + external.with_name("external.onnx.data").stat().st_size


def test_inspect_prints_the_table_and_writes_the_same_numbers_as_json(files, tmp_path, capsys):
    path = files["paths"]["pruned"]
    out = tmp_path / "inspect.json"
    assert main(["inspect", str(path), "--latency", "--batch-sizes", "1,4", "--repeats", "2", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = summarize_onnx(path)
    result = json.loads(out.read_text())
    assert result["framework"] == "onnx"
    assert result["summary"] == summary.to_dict()
    assert f"{summary.macs:,}" in printed and f"{summary.nonzeros:,}" in printed
    assert result["sizes"]["raw_bytes"] == path.stat().st_size
    assert f"{result['sizes']['raw_bytes']:,} bytes raw" in printed
    assert [row["batch_size"] for row in result["latency"]] == [1, 4]
    assert all(row["median_ms"] > 0 and row["runs"] == 2 for row in result["latency"])
    weight_bytes = 4 * summary.params
    for memory in result["memory"]:
        assert weight_bytes <= memory["weight_bytes"] <= weight_bytes + 64  # plus the Reshape's shape constant
        assert memory["peak_bytes"] == memory["weight_bytes"] + memory["peak_activation_bytes"]
    assert [m["batch_size"] for m in result["memory"]] == ([1, 4] if sys.platform.startswith("linux") else [])


def test_summarize_onnx_imports_without_torch():
    code = (
        "import sys; import prunekit.artifacts.onnx_summary, prunekit.artifacts.onnx_artifact, prunekit.commands.inspect; "
        "assert not any(m == 'torch' or m.startswith('torch.') for m in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
