"""``torch.onnx.export(dynamo=False)`` for tests that export with the TorchScript exporter on purpose.

These tests were written against the legacy exporter's files (prunekit falls back to it too). torch deprecates it
with a ``DeprecationWarning`` attributed to the caller, which the helper asserts, so that a torch that stops
warning (or drops the exporter) is noticed here rather than leaking a warning into every such test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


def export_legacy_onnx(model: Any, args: tuple[Any, ...], path: Path | str, **options: Any) -> None:
    """Export ``model`` to ``path`` with the legacy TorchScript exporter, asserting torch's deprecation warning."""
    import torch

    with pytest.warns(DeprecationWarning, match="You are using the legacy TorchScript-based ONNX export"):
        torch.onnx.export(model, args, str(path), dynamo=False, **options)
