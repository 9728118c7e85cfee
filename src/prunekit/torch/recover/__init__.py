"""Recovery after pruning for PyTorch: knowledge distillation and (sparsity-preserving) quantization-aware training.

Example::

    from prunekit.torch.recover import distill, pqat
    distill(pruned, dense, loader, epochs=5)
    pqat(pruned, loader, epochs=2).export_onnx(x[:64], "model.int8.onnx")
"""

# explicit re-exports (``name as name``): the public API of this package
from prunekit.torch.recover.distill import Distiller as Distiller
from prunekit.torch.recover.distill import distill as distill
from prunekit.torch.recover.distill import distillation_loss as distillation_loss
from prunekit.torch.recover.qat import QatExport as QatExport
from prunekit.torch.recover.qat import QuantizationAwareTraining as QuantizationAwareTraining
from prunekit.torch.recover.qat import pqat as pqat
from prunekit.torch.recover.qat import qat as qat
from prunekit.torch.recover.qat import sqnr_db as sqnr_db
from prunekit.torch.recover.qat import weight_codes as weight_codes
from prunekit.torch.recover.teacher_cache import TeacherLogitCache as TeacherLogitCache
from prunekit.torch.recover.teacher_cache import cached_distillation_loss as cached_distillation_loss
from prunekit.torch.recover.teacher_cache import distill_from_cache as distill_from_cache
