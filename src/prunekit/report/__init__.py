"""Reports: tables (console and Markdown) and, later, plots and HTML."""

from prunekit.report.tables import ResultTable, write_text_atomic

__all__ = ["ResultTable", "write_text_atomic"]
