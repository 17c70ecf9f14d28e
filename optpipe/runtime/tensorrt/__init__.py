"""TensorRT: engines through Polygraphy, shape profiles, layer timing, the CPU-side lint."""
