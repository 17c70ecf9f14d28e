"""A BERT 1536 wide x 20 layers (610 M parameters, 2.4 GB FP32: over protobuf's 2 GB limit),
mean-pooled, random seeded weights, real sentences.

Use: ``optpipe build benchmarks/scale_models/bert_wide.py:model --precision fp32,int8-dynamic,int4-weight``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _text import bert, calibration_data, eval_data, example_inputs

NAME = "bert_wide"
OUTPUT_NAMES: tuple[str, ...] = ("embedding",)
model = bert(hidden=1536, layers=20, heads=24)

__all__ = ["NAME", "OUTPUT_NAMES", "calibration_data", "eval_data", "example_inputs", "model"]
