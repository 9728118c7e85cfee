"""The words an LLM pruning job accepts for its comparison group and its per-layer ratios.

Torch-free, so the CLI and the recipe schema offer exactly the choices the backend takes.
"""

COMPARISONS = ("row", "layer")
"""Where an unstructured method ranks its scores: within each output row, or across the whole projection."""

COMPARISON_CHOICES = (*COMPARISONS, "auto")
"""What a user may ask for: a group, or ``"auto"`` (per projection, whichever reconstructs its outputs better)."""

RATIO_SCHEMES = ("uniform", "owl")
"""Named per-layer sparsity schemes (a ``{glob: sparsity}`` mapping is the other form)."""
