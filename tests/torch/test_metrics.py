"""Sparsity report and serialized sizes."""

import torch
from torch import nn

from prunekit.torch import DigitsCNN, prune_unstructured, serialized_size, sparsity_report


def test_sparsity_report_counts_every_parameter_exactly():
    model = nn.Linear(4, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0, 1.0, 0.0, 2.0], [3.0, 0.0, 0.0, 0.0]]))
        model.bias.copy_(torch.tensor([0.0, 5.0]))
    report = sparsity_report(model)
    assert report["layers"]["weight"] == {"shape": [2, 4], "numel": 8, "nonzero": 3, "sparsity": 0.625}
    assert report["layers"]["bias"]["nonzero"] == 1
    assert (report["total_params"], report["nonzero_params"]) == (10, 4)
    assert report["sparsity"] == 0.6


def test_pruning_shrinks_gzip_size_but_not_raw_size():
    model = DigitsCNN()
    dense = serialized_size(model)
    prune_unstructured(model, 0.9)
    pruned = serialized_size(model)
    assert pruned["raw_bytes"] == dense["raw_bytes"]
    assert pruned["gzip_bytes"] < 0.3 * dense["gzip_bytes"]
