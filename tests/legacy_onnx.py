"""``torch.onnx.export(dynamo=False)`` for tests that export with the TorchScript exporter on purpose.

These tests were written against the legacy exporter's files (prunekit falls back to it too). torch deprecates it
with a ``DeprecationWarning`` attributed to the caller, which the helper asserts, so that a torch that stops
warning (or drops the exporter) is noticed here rather than leaking a warning into every such test.

The exporter traces one run of the forward: torch's ``TracerWarning`` flags each Python branch on a tensor's
value or shape in the traced code (transformers' masks and caches, ``F.multi_head_attention_forward``), which
the trace fixes to the example's path. The tests compare the exported file's outputs on that same example, so
those warnings say nothing here and are ignored during the export, as are the exporter's notes on the ONNX
ops it chose (``aten::index``, constant folding of strided ``Slice``). Nothing else is.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest

_EXPORTER_NOTES = (
    "Exporting aten::index operator of advanced indexing",
    "Constant folding - Only steps=1 can be constant folded",
)


def export_legacy_onnx(model: Any, args: tuple[Any, ...], path: Path | str, **options: Any) -> None:
    """Export ``model`` to ``path`` with the legacy TorchScript exporter, asserting torch's deprecation warning."""
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        for note in _EXPORTER_NOTES:
            warnings.filterwarnings("ignore", message=note, category=UserWarning)
        with pytest.warns(DeprecationWarning, match="You are using the legacy TorchScript-based ONNX export"):
            torch.onnx.export(model, args, str(path), dynamo=False, **options)
