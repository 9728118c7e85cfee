"""The recipe ``gate:`` section: validated with the recipe, checked after the run, ``prunekit run`` exits 1 on a fail."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
import yaml

from prunekit.cli import main
from prunekit.recipes import RecipeError, parse_recipe

TINY = {
    "name": "tiny-gated",
    "model": {"factory": "prunekit.torch:DigitsCNN", "kwargs": {"channels": [4, 8], "hidden": 16}, "input_shape": [1, 8, 8]},
    "train": {"epochs": 1},
    "prune": {"method": "one-shot", "sparsities": [0.8], "epochs": 1},
    "report": {"latency_batch_sizes": [1]},
}


def _errors(gate, **sections):
    with pytest.raises(RecipeError) as info:
        parse_recipe({**TINY, **sections, "gate": gate})
    return dict(info.value.errors)


def test_gate_section_is_validated_up_front():
    assert "gate" in _errors({})
    assert "gate.min_compression" in _errors({"min_compression": 0})
    assert "gate.max_latency_ms" in _errors({"max_latency_ms": float("inf")})
    assert "gate.require" in _errors({"max_latency_ms": 1, "require": "most"})
    assert "one-shot 80%" in _errors({"max_latency_ms": 1, "candidate": "one-shot 50%"})["gate.candidate"]
    no_latency = _errors({"max_latency_ms": 1}, report={"latency_batch_sizes": []})
    assert "latency_batch_sizes" in no_latency["gate.max_latency_ms"]
    recipe = parse_recipe({**TINY, "gate": {"min_compression": 1.5, "candidate": "one-shot 80%"}})
    assert (recipe.gate.min_compression, recipe.gate.candidate, recipe.gate.require) == (1.5, "one-shot 80%", "all")


@pytest.mark.slow
def test_run_exits_1_when_the_recipe_gate_fails_and_0_when_it_holds(tmp_path, capsys):
    recipe = tmp_path / "gated.yaml"
    out = tmp_path / "out"
    recipe.write_text(yaml.safe_dump({**TINY, "gate": {"max_accuracy_drop": 100, "min_compression": 1000}}))
    assert main(["run", str(recipe), "--out", str(out)]) == 1
    assert "gate FAILED" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    candidate = results["candidates"][0]
    assert candidate["name"] == "one-shot 80%" and candidate["gzip_bytes"] == results["runs"][0]["gzip_bytes"]
    assert candidate["latency_batch"] == 1 and candidate["latency_ms"] == results["runs"][0]["latency"][0]["median_ms"]
    ratio = results["dense"]["gzip_bytes"] / candidate["gzip_bytes"]
    assert results["gate"]["checks"][1]["value"] == f"{ratio:.2f}x"
    suite = ET.parse(out / "gate.xml").getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures")) == ("2", "1")
    assert "Gate" in (out / "report.md").read_text()
    # the standalone gate reads the same results.json
    assert main(["gate", str(out / "results.json"), "--min-compression", f"{ratio * 0.99:.6f}"]) == 0
    assert main(["gate", str(out / "results.json"), "--min-compression", f"{ratio * 1.01:.6f}"]) == 1
    recipe.write_text(yaml.safe_dump({**TINY, "gate": {"max_accuracy_drop": 100, "min_compression": 1.0}}))
    assert main(["run", str(recipe), "--out", str(out)]) == 0
    assert "gate passed" in capsys.readouterr().out
