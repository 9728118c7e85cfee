"""Deployable files from Keras models: TFLite conversion and interpreter evaluation, saving with pruning state."""
