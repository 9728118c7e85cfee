"""PyTorch backend: unstructured and structured pruning, training drivers, metrics, export.

Importing this module needs the ``torch`` extra: ``pip install 'prunekit[torch]'``.
"""

from prunekit._optional import require

require("torch", "torch")

from prunekit.torch.models import DigitsCNN, DigitsMLP  # noqa: E402

__all__ = [
    "DigitsCNN",
    "DigitsMLP",
]
