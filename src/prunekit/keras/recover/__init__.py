"""Recovery after pruning for Keras 3: distillation on ``keras.distillation``, QAT and PQAT with int8 TFLite export.

Example::

    from prunekit.keras.recover import distill, pqat, export_tflite
    distill(pruned, dense, x, y, epochs=5)
    flatbuffer, zeros = export_tflite(pqat(pruned, x, y, epochs=2).model, x_val)
"""

from prunekit.keras.recover.distill import Distiller, ProjectedFeatureDistillation, distill
from prunekit.keras.recover.qat import KerasQat, export_tflite, kernel_codes, pqat, qat, quantize_model, strip_qat

__all__ = [
    "Distiller",
    "KerasQat",
    "ProjectedFeatureDistillation",
    "distill",
    "export_tflite",
    "kernel_codes",
    "pqat",
    "qat",
    "quantize_model",
    "strip_qat",
]
