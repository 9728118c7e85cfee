"""The built-in demo on the bundled digits, for either framework: a thin driver over the method registry.

Example::

    from prunekit.demo import run_demo
    run_demo(output_dir="demo-out")
"""

from prunekit.demo.run import FRAMEWORKS, run_demo
from prunekit.demo.tables import artifacts_table, results_table, structured_table

__all__ = ["FRAMEWORKS", "artifacts_table", "results_table", "run_demo", "structured_table"]
