"""TwoHeadNet: a two-input, two-output MLP on scikit-learn's wine data set.

It exists to exercise the multi-input / multi-output paths of the compiler
(input and output naming, per-output parity tolerances, tuple outputs), so the
model is small and the data is real.

Data (wine, 178 samples, 3 cultivars, 13 features), stratified 70/30 split with a
fixed seed; every feature is standardised with the *training* split's mean and
standard deviation. Alcohol is held out as the regression target, the other 12
features are split in two groups:

* ``color`` float32 [N,4]: the colour / pigment measurements — proanthocyanins,
  colour intensity, hue, OD280/OD315 of diluted wines;
* ``chem`` float32 [N,8]: the rest of the chemistry — malic acid, ash,
  alcalinity of ash, magnesium, total phenols, flavanoids, non-flavanoid
  phenols, proline.

Outputs: ``class_logits`` [N,3] (cultivar) and ``regression`` [N,1] (alcohol, in
standardised units: multiply by the training std and add the mean, both stored
in the eval npz as ``alcohol_mean`` / ``alcohol_std``, to get % vol).

Imports only torch and numpy; data files are written by ``sample_models/train.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

NAME = "two_heads"
INPUT_NAMES: tuple[str, ...] = ("chem", "color")
OUTPUT_NAMES: tuple[str, ...] = ("class_logits", "regression")
NUM_CLASSES = 3

# Column indices into sklearn.datasets.load_wine().data (used by train.py).
TARGET_FEATURE = 0  # alcohol
CHEM_FEATURES: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 12)
COLOR_FEATURES: tuple[int, ...] = (8, 9, 10, 11)

_HERE = Path(__file__).resolve().parent
DATA_DIR = _HERE / "data"
WEIGHTS_PATH = _HERE / "weights" / f"{NAME}.safetensors"
CALIB_PATH = DATA_DIR / f"{NAME}_calib.npz"
EVAL_PATH = DATA_DIR / f"{NAME}_eval.npz"


class TwoHeadNet(nn.Module):
    """forward(chem [N,8], color [N,4]) → (class_logits [N,3], regression [N,1])."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        # Separate encoders per input, so each input has its own subgraph before
        # they meet at the Concat (a more interesting graph than one wide Linear).
        self.chem_enc = nn.Sequential(nn.Linear(len(CHEM_FEATURES), hidden), nn.ReLU())
        self.color_enc = nn.Sequential(nn.Linear(len(COLOR_FEATURES), hidden // 2), nn.ReLU())
        self.trunk = nn.Sequential(nn.Linear(hidden + hidden // 2, hidden), nn.ReLU(), nn.Dropout(0.1))
        self.class_head = nn.Linear(hidden, NUM_CLASSES)
        self.reg_head = nn.Linear(hidden, 1)

    def forward(self, chem: torch.Tensor, color: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Shared trunk, two heads: cultivar logits and standardised alcohol."""
        h = self.trunk(torch.cat([self.chem_enc(chem), self.color_enc(color)], dim=1))
        return self.class_head(h), self.reg_head(h)


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
    """Held-out inputs keyed by input name, and the int64 cultivar labels.

    The standardised alcohol targets are in the same file under ``alcohol``
    (see :func:`eval_regression_targets`).
    """
    data = _load_npz(EVAL_PATH)
    return {name: data[name] for name in INPUT_NAMES}, data["labels"]


def eval_regression_targets() -> np.ndarray:
    """Held-out standardised alcohol values, float32 [N,1], aligned with :func:`eval_data`."""
    return _load_npz(EVAL_PATH)["alcohol"]


def example_inputs() -> tuple[torch.Tensor, ...]:
    """Two real held-out wines (batch 2)."""
    inputs, _ = eval_data()
    return tuple(torch.from_numpy(inputs[name][:2].copy()) for name in INPUT_NAMES)
