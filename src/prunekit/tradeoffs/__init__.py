"""Choosing the trade-off, framework-free: budget allocation over sensitivity data, Pareto fronts."""
