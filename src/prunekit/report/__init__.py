"""Reports: tables (console and Markdown) and, later, plots and HTML."""

from prunekit.report.tables import ResultTable

__all__ = ["ResultTable"]
