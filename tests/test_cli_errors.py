"""Every CLI command turns bad input into one clear line and exit 2 (--debug shows the traceback), and
`prunekit inspect` reports what was asked in one run: file sizes of the file given, full-width tables."""

import io
import json

import pytest
from rich.console import Console

from prunekit.artifacts.onnx_summary import summarize_onnx
from prunekit.cli import main
from prunekit.core.atomic import atomic_write_text
from prunekit.core.tables import ResultTable
from prunekit.errors import ConfigError, CorruptFileError
from prunekit.torch import DigitsCNN
from prunekit.torch.deploy.compact import save_compressed


def one_error_line(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("prunekit ")]
    assert len(lines) == 1, err
    return lines[0]


def test_a_corrupt_onnx_file_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "bad.onnx").write_bytes(b"not a protobuf at all \xff\xff")
    assert main(["inspect", str(tmp_path / "bad.onnx")]) == 2
    assert "is not a readable ONNX model (DecodeError" in one_error_line(capsys)


def test_debug_shows_the_traceback(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"not a protobuf at all \xff\xff")
    with pytest.raises(CorruptFileError):
        main(["inspect", str(tmp_path / "bad.onnx"), "--debug"])


def test_an_empty_onnx_file_is_corrupt_not_an_empty_summary(tmp_path):
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(CorruptFileError, match="holds no ONNX graph"):
        summarize_onnx(tmp_path / "empty.onnx")


def test_a_wrong_input_shape_names_the_flag(capsys):
    assert main(["inspect", "prunekit.torch:DigitsCNN", "--input-shape", "3,5,5"]) == 2
    assert "--input-shape 3,5,5 does not fit prunekit.torch:DigitsCNN" in one_error_line(capsys)


def test_a_directory_given_as_the_model_says_a_file_was_expected(tmp_path, capsys):
    assert main(["inspect", str(tmp_path), "--input-shape", "1,8,8"]) == 2
    assert "is a directory; give a model file" in one_error_line(capsys)


def test_out_pointing_at_a_file_is_an_argument_error(tmp_path, capsys):
    (tmp_path / "taken").write_text("x")
    with pytest.raises(SystemExit) as exit_:
        main(["run", "recipe.yaml", "--out", str(tmp_path / "taken")])
    assert exit_.value.code == 2
    assert "taken is a file; give a directory" in capsys.readouterr().err


def test_saving_onto_a_directory_says_a_file_path_was_expected(tmp_path):
    (tmp_path / "report.md").mkdir()
    with pytest.raises(ConfigError, match=r"report.md: it is a directory; give a file path"):
        atomic_write_text(tmp_path / "report.md", "x")


def test_inspect_reports_the_size_of_a_compact_int8_file_not_of_the_float_state_dict(tmp_path, capsys):
    model = DigitsCNN()
    path = tmp_path / "model.int8.safetensors"
    save_compressed(model, path, dtype="int8")
    floats = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    out = tmp_path / "inspect.json"
    assert (
        main(["inspect", str(path), "--factory", "prunekit.torch:DigitsCNN", "--input-shape", "1,8,8", "--json", str(out)]) == 0
    )
    sizes = json.loads(out.read_text())["sizes"]
    assert sizes["raw_bytes"] == path.stat().st_size
    assert sizes["raw_bytes"] < floats / 3  # int8 values: about a quarter of the float state_dict
    assert f"{path.name}: {path.stat().st_size:,} bytes raw" in capsys.readouterr().out


def test_tables_off_a_terminal_keep_every_digit():
    table = ResultTable("wide", [f"column {i}" for i in range(10)])
    table.add_row(*[f"{123456789 + i:,}" for i in range(10)])
    buffer = io.StringIO()
    table.print(Console(file=buffer, width=80))  # an explicit console keeps its width
    assert "123,456,798" not in buffer.getvalue().replace("\n", "")  # cut at 80 columns, as before

    import contextlib

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        table.print()
    assert all(f"{123456789 + i:,}" in out.getvalue() for i in range(10))
