"""Recovery after pruning for PyTorch: knowledge distillation and (sparsity-preserving) quantization-aware training.

Example::

    from prunekit.torch.recover import distill, qat
    distill(pruned, dense, loader, epochs=5)
"""

from prunekit.torch.recover.distill import Distiller, distill, distillation_loss

__all__ = ["Distiller", "distill", "distillation_loss"]
