"""Sparse CPU inference for pruned PyTorch models: sparse weight kernels, activation sparsity, loading compact files.

See ``docs/sparse-inference.md`` for when sparsity pays on a CPU and the measured numbers.

Example::

    from prunekit.torch.deploy.sparse import sparsify, load_sparse
    fast, report = sparsify(pruned_model, example_batch)
    print(report.table())
"""

from prunekit.torch.deploy.sparse.activation import (
    ActivationThresholds,
    activation_sparsity_report,
    apply_activation_sparsity,
    calibrate_activation_sparsity,
)
from prunekit.torch.deploy.sparse.convert import LayerChoice, SparseReport, sparsify
from prunekit.torch.deploy.sparse.formats import Layout, detect_layout
from prunekit.torch.deploy.sparse.kernels import HAVE_NUMBA, set_threads
from prunekit.torch.deploy.sparse.layers import ActivationSparseLinear, SparseConv2d, SparseLinear
from prunekit.torch.deploy.sparse.load import load_sparse
from prunekit.torch.deploy.sparse.serving import save_servable

__all__ = [
    "HAVE_NUMBA",
    "ActivationSparseLinear",
    "ActivationThresholds",
    "LayerChoice",
    "Layout",
    "SparseConv2d",
    "SparseLinear",
    "SparseReport",
    "activation_sparsity_report",
    "apply_activation_sparsity",
    "calibrate_activation_sparsity",
    "detect_layout",
    "load_sparse",
    "save_servable",
    "set_threads",
    "sparsify",
]
