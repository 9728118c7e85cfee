"""The demo's report from its results dict: table, plots and the shipped recipe."""

import json
import re

import yaml

from prunekit.demo.report import demo_report
from prunekit.recipes import builtin_recipe_text

RESULTS = {
    "framework": "torch",
    "dense": {"accuracy": 0.9889, "size_bytes": 612000, "gzip_bytes": 565000, "seconds": 20},
    "runs": [
        {"method": "gradual", "sparsity": 0.5, "accuracy": 0.9917, "size_bytes": 612000, "gzip_bytes": 339000, "seconds": 9},
        {"method": "gradual", "sparsity": 0.9, "accuracy": 0.9806, "size_bytes": 612000, "gzip_bytes": 107000, "seconds": 17},
    ],
}


def test_demo_report_holds_the_table_two_plots_and_the_demo_recipe(tmp_path):
    paths = demo_report(RESULTS, tmp_path)
    html = paths["html"].read_text()
    assert len(re.findall(r'src="data:image/png;base64,', html)) == 2
    assert "99.17%" in html  # the gradual 50% accuracy, from the demo's own table
    recipe = json.loads(paths["json"].read_text())["recipe"]
    assert recipe == builtin_recipe_text("demo").replace("[0.5, 0.8, 0.9]", "[0.5, 0.9]")  # the amounts that ran


def test_demo_report_shows_every_stage_the_console_showed_dense_first(tmp_path):
    dense = {"accuracy": 0.98, "size_bytes": 600000, "gzip_bytes": 550000, "params": 150000, "macs": 2_000_000}
    run = {"method": "channels", "sparsity": 0.5, "accuracy": 0.97, "size_bytes": 160000, "gzip_bytes": 150000}
    results = {
        "framework": "torch",
        "dense": {**dense, "latency_ms_b64": 2.0},
        "runs": [{**run, "params": 40000, "macs": 510_000, "latency_ms_b64": 0.8}],
        "artifacts": {
            "batch_sizes": [1, 64],
            "rows": [
                {
                    "name": "pruned int8 onnx",
                    "size_bytes": 41000,
                    "gzip_bytes": 30000,
                    "size_ratio": 14.6,
                    "accuracy": 0.9655,
                    "latency_ms": {"1": {"median": 0.11}, "64": {"median": 0.52}},
                    "speedup": {"64": 3.85},
                }
            ],
        },
    }
    paths = demo_report(results, tmp_path)
    markdown = paths["md"].read_text()
    for heading in ("prunekit demo (torch)", "Structured pruning: physically smaller model", "Deployable artifacts"):
        assert heading in markdown
    assert markdown.index("| dense |") < markdown.index("| channels |")
    assert "| 510,000 |" in markdown and "| 2.50 |" in markdown  # MACs and the 2.0/0.8 speedup
    assert "| pruned int8 onnx | 40 | 29 | 14.6 | 96.5% | 0.11 | 0.52 | 3.85 |" in markdown
    assert yaml.safe_load(json.loads(paths["json"].read_text())["recipe"])["prune"]["method"] == "channels"
