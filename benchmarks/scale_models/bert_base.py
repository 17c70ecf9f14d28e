"""BERT-base encoder (110 M parameters, 0.44 GB FP32), mean-pooled, random seeded weights, real sentences.

Use: ``optpipe build benchmarks/scale_models/bert_base.py:model --precision auto``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _text import bert, calibration_data, eval_data, example_inputs

NAME = "bert_base"
OUTPUT_NAMES: tuple[str, ...] = ("embedding",)
model = bert(hidden=768, layers=12, heads=12)

__all__ = ["NAME", "OUTPUT_NAMES", "calibration_data", "eval_data", "example_inputs", "model"]
