"""Recovery after pruning for Keras 3: distillation on ``keras.distillation``, QAT and PQAT with int8 TFLite export.

Example::

    from prunekit.keras.recover import distill, pqat, export_tflite
    distill(pruned, dense, x, y, epochs=5)
    flatbuffer, zeros = export_tflite(pqat(pruned, x, y, epochs=2).model, x_val)
"""

# explicit re-exports (``name as name``): the public API of this package
from prunekit.keras.recover.distill import Distiller as Distiller
from prunekit.keras.recover.distill import ProjectedFeatureDistillation as ProjectedFeatureDistillation
from prunekit.keras.recover.distill import distill as distill
from prunekit.keras.recover.qat import KerasQat as KerasQat
from prunekit.keras.recover.qat import export_tflite as export_tflite
from prunekit.keras.recover.qat import kernel_codes as kernel_codes
from prunekit.keras.recover.qat import pqat as pqat
from prunekit.keras.recover.qat import qat as qat
from prunekit.keras.recover.qat import quantize_model as quantize_model
from prunekit.keras.recover.qat import strip_qat as strip_qat
