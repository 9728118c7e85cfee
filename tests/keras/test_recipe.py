"""A recipe with ``framework: keras`` runs the whole chain: train, prune, fine-tune, strip, export TFLite, report."""

import json

import numpy as np
import yaml

from prunekit.cli import main
from prunekit.keras import load_digits_nhwc
from prunekit.keras.deploy.tflite import TFLiteModel
from prunekit.recipes import builtin_recipe_text, parse_recipe


def _quick_keras_recipe() -> dict:
    data = yaml.safe_load(builtin_recipe_text("demo-keras"))
    data["model"]["kwargs"] = {"channels": [8, 16], "hidden": 32}
    data["train"]["epochs"] = 6
    data["prune"].update({"sparsities": [0.8], "epochs": 2})
    data["export"]["int8"] = True
    data["report"]["latency_batch_sizes"] = [1]
    return data


def test_the_shipped_keras_recipe_is_valid():
    recipe = parse_recipe(yaml.safe_load(builtin_recipe_text("demo-keras")))
    assert recipe.framework == "keras" and recipe.model.input_shape == [8, 8, 1] and recipe.export.tflite


def test_a_keras_recipe_runs_end_to_end_from_the_cli(tmp_path, capsys):
    path = tmp_path / "keras.yaml"
    path.write_text(yaml.safe_dump(_quick_keras_recipe()))
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    results = json.loads((out / "results.json").read_text())
    dense, run = results["dense"], results["runs"][0]
    assert results["framework"] == "keras" and run["method"] == "gradual" and run["target"] == 0.8
    # conv and dense kernels are 80% zeros: far fewer nonzeros than the dense model, same parameter count
    assert run["params"] == dense["params"] and run["nonzeros"] < 0.35 * dense["nonzeros"]
    assert run["gzip_bytes"] < dense["gzip_bytes"] and dense["accuracy"] > 0.8
    split = load_digits_nhwc()
    tflite = TFLiteModel(run["files"]["tflite"])
    accuracy = float((tflite.predict(split.x_test).argmax(-1) == split.y_test).mean())
    assert abs(accuracy - run["accuracy"]) < 1e-9  # the float TFLite file is the stripped Keras model
    int8 = TFLiteModel(run["files"]["int8"])
    assert abs(float((int8.predict(split.x_test).argmax(-1) == split.y_test).mean()) - accuracy) < 0.03
    assert {"report.html", "report.md", "report.json"} <= {p.name for p in out.iterdir()}
    from prunekit.artifacts.profile import ReferenceProfile

    profiles = {kind: ReferenceProfile.load(path) for kind, path in run["profiles"].items()}
    assert profiles["tflite"].inputs[0].dtype == "float32" and profiles["int8"].inputs[0].dtype == "int8"
    assert profiles["tflite"].samples == profiles["int8"].samples == len(split.x_val)
    assert abs(profiles["tflite"].accuracy - float((tflite.predict(split.x_val).argmax(-1) == split.y_val).mean())) < 1e-9
    assert profiles["int8"].outputs[0].kind == "classes" and profiles["int8"].outputs[0].quantization is not None
    assert np.isfinite(run["latency"][0]["median_ms"])


def test_a_keras_recipe_refuses_an_onnx_export_and_a_torch_only_method():
    from prunekit.recipes import RecipeError

    data = _quick_keras_recipe()
    data["export"] = {"onnx": True}
    data["prune"]["method"] = "one-shot-random"
    try:
        parse_recipe(data)
    except RecipeError as error:
        message = str(error)
    assert "export.onnx: keras models export to tflite; set export.tflite: true instead" in message
    assert "method 'one-shot-random' has no keras handler; it runs on ['torch']" in message
