"""Sweeps over pruning methods and sparsities: trials in parallel processes, resumable, with Pareto fronts."""
