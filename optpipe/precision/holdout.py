"""Golden rows from calibration data: a deterministic share held out, never calibrated on.

Why: without a labelled ``eval_data()`` the golden data is the example batch
(often 2 rows), so top-1 agreement and cosine were judged on 2 rows. When the
build has real calibration data, a share of its rows is set aside before any
calibration: those rows become parity (golden) rows and the rest calibrate.
The split is a seeded permutation, so a rebuild holds out the same rows; its
rule and the held-out row indices are recorded in ``report.json``
(``build.holdout``) so anyone can check that no held-out row was calibrated on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from optpipe.build_record import HoldoutRecord
from optpipe.tensor_spec import TensorSpec

#: Aim: at least this many real rows judged by every gate, when the data allows.
TARGET_ROWS = 32
#: At most this many held-out rows (the golden data is saved in the build directory).
MAX_ROWS = 64
#: At most this many calibration samples are read (the int8 pass's own limit).
MAX_SAMPLES = 512
#: The seed of the permutation that picks the held-out rows.
SEED = 0
RULE = (f"rows of the calibration data in a seeded permutation (numpy default_rng({SEED})); the first "
        f"min({MAX_ROWS}, max({TARGET_ROWS}, rows // 4), rows // 2) are held out for parity, the rest calibrate")


@dataclass(frozen=True)
class Holdout:
    """Held-out parity rows, the calibration rows left, and what to record about the split."""

    heldout: dict[str, np.ndarray]
    calibration: list[dict[str, np.ndarray]]  # the rows left, in the data's order, batched as the data was
    rows: int
    indices: tuple[int, ...]

    def record(self, source: str | None) -> HoldoutRecord:
        """``report.json`` ``build.holdout``."""
        return HoldoutRecord(source, self.rows, len(self.indices), self.rows - len(self.indices), RULE, self.indices)


def heldout_count(rows: int) -> int:
    """How many of ``rows`` are held out: at least 32 when at least 64 exist, never more than half."""
    return min(MAX_ROWS, max(TARGET_ROWS, rows // 4), rows // 2)


def split_rows(samples: Sequence[dict[str, np.ndarray]], specs: Sequence[TensorSpec]) -> Holdout | None:
    """Hold out rows of ``samples`` (batches of any size), or None when they cannot be split by row.

    Rows can be split only when axis 0 is the batch of every input and the samples agree on every
    other axis (text of different lengths per sample cannot be stacked into one set of rows).
    """
    names = [spec.name for spec in specs]
    if not samples or any(len(spec.shape) == 0 for spec in specs):
        return None
    try:
        rows = {name: np.concatenate([sample[name] for sample in samples]) for name in names}
    except ValueError:
        return None
    count = {value.shape[0] for value in rows.values()}
    if len(count) != 1:
        return None
    total = count.pop()
    held = heldout_count(total)
    if held == 0:
        return None
    order = np.random.default_rng(SEED).permutation(total)
    chosen = np.sort(order[:held])
    kept = np.sort(order[held:])
    heldout = {name: np.ascontiguousarray(value[chosen]) for name, value in rows.items()}
    size = max(1, int(next(iter(samples[0].values())).shape[0]))  # keep the data's own batch size
    calibration = [{name: np.ascontiguousarray(rows[name][kept[i : i + size]]) for name in names}
                   for i in range(0, len(kept), size)]
    return Holdout(heldout, calibration, total, tuple(int(i) for i in chosen))
