"""`prunekit inspect model.keras` needs no --input-shape when the model defines its input."""

from prunekit.cli import main
from prunekit.keras import digits_cnn


def test_a_keras_file_with_a_defined_input_is_inspected_without_input_shape(tmp_path, capsys):
    model = digits_cnn()
    path = tmp_path / "model.keras"
    model.save(path)
    assert main(["inspect", str(path), "--batch-sizes", "1"]) == 0
    out = capsys.readouterr().out
    total = next(line for line in out.splitlines() if "total" in line)
    assert "1,330,432" in total  # the digits CNN's MACs at 8x8x1: the input shape came from the file
    assert f"model.keras: {path.stat().st_size:,} bytes raw" in out


def test_a_corrupt_keras_file_is_one_line_and_exit_2(tmp_path, capsys):
    path = tmp_path / "model.keras"
    path.write_bytes(b"PK\x03\x04 truncated")
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "is not a readable Keras model" in err
