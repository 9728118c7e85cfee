"""The bottom layer: record types, tables, atomic files, gzip sizes, optional imports, the job pool."""
