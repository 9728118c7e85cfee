"""Choosing the trade-off on PyTorch models: sensitivity analysis and budget allocation (weights or channels)."""
