"""Runners (PyTorch, ONNX Runtime, TensorRT beneath), timing, the per-op profiler and the targets."""
