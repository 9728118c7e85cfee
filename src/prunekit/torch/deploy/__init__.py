"""Deployable files from PyTorch models: ONNX export, the compact sparse file, artifact comparison, loading weights."""
