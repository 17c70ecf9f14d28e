"""DigitsCNN: a small but compute-heavy CNN for scikit-learn's 8x8 handwritten digits.

The network is deliberately wider than the task needs (1→32→64→128 channels, all
3x3 dense convolutions at full 8x8 resolution). At batch 32 the two large
convolutions cost ~190 M multiply-adds, so kernel time, not per-call overhead,
dominates latency: that is what lets a benchmark show ONNX Runtime INT8 beating
FP32 on it. There is no depthwise convolution on purpose: depthwise layers are a
known source of static-INT8 accuracy loss and would muddy that comparison.

This module imports only torch and numpy so that ``optpipe build
sample_models/digits_cnn.py:DigitsCNN`` works without scikit-learn installed; the
held-out and calibration data are read from ``data/*.npz`` files written by
``sample_models/train.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

NAME = "digits_cnn"
INPUT_NAMES: tuple[str, ...] = ("x",)
OUTPUT_NAMES: tuple[str, ...] = ("logits",)
NUM_CLASSES = 10

_HERE = Path(__file__).resolve().parent
DATA_DIR = _HERE / "data"
WEIGHTS_PATH = _HERE / "weights" / f"{NAME}.safetensors"
CALIB_PATH = DATA_DIR / f"{NAME}_calib.npz"
EVAL_PATH = DATA_DIR / f"{NAME}_eval.npz"


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 conv (no bias, BatchNorm supplies it) + BN + ReLU; BN folds into the conv on export."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=False),
    )


class DigitsCNN(nn.Module):
    """Classify 8x8 grey digits: x float32 [N,1,8,8] in [0,1] → logits [N,10]."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_block(1, 32),
            _conv_block(32, 64),
            _conv_block(64, 128),
            # One 2x2 max-pool: keeps some spatial layout for the classifier
            # while shrinking the Linear layer 4x.
            nn.MaxPool2d(kernel_size=2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(p=0.2),
            nn.Linear(128 * 4 * 4, NUM_CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return unnormalised class scores (softmax is left to the consumer)."""
        return self.classifier(self.features(x))


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    """Read a committed npz; a missing file means ``train.py`` has not been run."""
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; run `python -m sample_models.train` to create it")
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def calibration_data() -> dict[str, np.ndarray]:
    """Training-split inputs for INT8 calibration, keyed by input name (first axis = samples)."""
    data = _load_npz(CALIB_PATH)
    return {name: data[name] for name in INPUT_NAMES}


def eval_data() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Held-out inputs keyed by input name, and their int64 class labels."""
    data = _load_npz(EVAL_PATH)
    return {name: data[name] for name in INPUT_NAMES}, data["labels"]


def example_inputs() -> tuple[torch.Tensor, ...]:
    """Two real held-out images (batch 2, so export never specialises the batch to 1)."""
    inputs, _ = eval_data()
    return tuple(torch.from_numpy(inputs[name][:2].copy()) for name in INPUT_NAMES)
