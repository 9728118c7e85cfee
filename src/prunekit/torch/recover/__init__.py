"""Recovery after pruning for PyTorch: knowledge distillation and (sparsity-preserving) quantization-aware training.

Example::

    from prunekit.torch.recover import distill, pqat
    distill(pruned, dense, loader, epochs=5)
    pqat(pruned, loader, epochs=2).export_onnx(x[:64], "model.int8.onnx")
"""

from prunekit.torch.recover.distill import Distiller, distill, distillation_loss
from prunekit.torch.recover.qat import QatExport, QuantizationAwareTraining, pqat, qat, sqnr_db, weight_codes

__all__ = [
    "Distiller",
    "QatExport",
    "QuantizationAwareTraining",
    "distill",
    "distillation_loss",
    "pqat",
    "qat",
    "sqnr_db",
    "weight_codes",
]
