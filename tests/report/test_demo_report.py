"""The demo's report from its results dict: table, plots and the shipped recipe."""

import json
import re

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
    assert json.loads(paths["json"].read_text())["recipe"] == builtin_recipe_text("demo")
