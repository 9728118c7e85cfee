"""Choosing the trade-off on Keras models: sensitivity analysis and budget allocation."""
