"""Deployable files, framework-free: the compact sparse format, ONNX and TFLite readers, runtimes and quantization."""
