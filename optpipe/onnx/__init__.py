"""ONNX graph utilities: loading with clear errors, the graph-shape reader, inspection, output producers."""
