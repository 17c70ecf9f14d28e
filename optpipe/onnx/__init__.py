"""ONNX graph utilities: loading with clear errors, inspection, what produces each output."""
