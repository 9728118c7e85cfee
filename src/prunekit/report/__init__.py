"""Reports: tables (console and Markdown) and, later, plots and HTML."""

from prunekit.core.tables import ResultTable

__all__ = ["ResultTable"]
