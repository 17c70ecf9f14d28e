"""Golden rows from calibration data: a deterministic share held out, never calibrated on.

Why: without a labelled ``eval_data()`` the golden data is the example batch
(often 2 rows), so top-1 agreement and cosine were judged on 2 rows. When the
build has real calibration data, a share of its rows is set aside before any
calibration: those rows become parity (golden) rows and the rest calibrate.
The split is a seeded permutation, so a rebuild holds out the same rows; its
rule and the held-out row indices are recorded in ``report.json``
(``build.holdout``) so anyone can check that no held-out row was calibrated on.

The held-out rows are split once more, by the same permutation: *test rows*
that only the final verdict sees, and *guard rows* the accuracy guard may tune
on (issue 17: a verdict on the rows the guard stopped on is no evidence). The
test share is the larger half; when the guard's half would hold fewer than
:data:`MIN_GUARD_ROWS` rows, every held-out row is a test row (the guard then
uses the example's rows only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from optpipe.core.records import HoldoutRecord
from optpipe.core.tensor_spec import TensorSpec

#: Aim: at least this many real rows judged by every gate, when the data allows.
TARGET_ROWS = 32
#: At most this many held-out rows (the golden data is saved in the build directory).
MAX_ROWS = 64
#: At most this many calibration samples are read (the int8 pass's own limit).
MAX_SAMPLES = 512
#: The seed of the permutation that picks the held-out rows.
SEED = 0
#: Fewer guard rows than this are not worth tuning on: they all become test rows.
MIN_GUARD_ROWS = 4
RULE = (f"rows of the calibration data in a seeded permutation (numpy default_rng({SEED})); the first "
        f"min({MAX_ROWS}, max({TARGET_ROWS}, rows // 4), rows // 2) are held out for parity, the rest calibrate; "
        f"of the held-out rows the first ceil(n / 2) in the permutation are test rows (the final verdict only), "
        f"the rest guard rows (the accuracy guard may use them; all test rows when fewer than {MIN_GUARD_ROWS})")


@dataclass(frozen=True)
class Holdout:
    """Held-out parity rows, the calibration rows left, and what to record about the split."""

    heldout: dict[str, np.ndarray]
    calibration: list[dict[str, np.ndarray]]  # the rows left, in the data's order, batched as the data was
    rows: int
    indices: tuple[int, ...]
    # The held-out rows split: guard rows (the guard may use them) and test rows (the verdict only).
    guard: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    guard_indices: tuple[int, ...]
    test_indices: tuple[int, ...]

    def record(self, source: str | None) -> HoldoutRecord:
        """``report.json`` ``build.holdout``."""
        return HoldoutRecord(source, self.rows, len(self.indices), self.rows - len(self.indices), RULE, self.indices,
                             self.guard_indices, self.test_indices, SEED)


def guard_test_counts(held: int) -> tuple[int, int]:
    """``(guard, test)`` rows of ``held`` held-out rows: test takes the larger half; a tiny guard share goes to test."""
    test = (held + 1) // 2
    guard = held - test
    return (0, held) if guard < MIN_GUARD_ROWS else (guard, test)


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
    _, test_count = guard_test_counts(held)
    test_index, guard_index = np.sort(order[:test_count]), np.sort(order[test_count:held])
    size = max(1, int(next(iter(samples[0].values())).shape[0]))  # keep the data's own batch size
    calibration = [{name: np.ascontiguousarray(rows[name][kept[i : i + size]]) for name in names}
                   for i in range(0, len(kept), size)]
    return Holdout(_take(rows, chosen), calibration, total, _ints(chosen), _take(rows, guard_index),
                   _take(rows, test_index), _ints(guard_index), _ints(test_index))


def _take(rows: dict[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
    """The rows at ``index`` of every input; empty (no inputs) when ``index`` is."""
    return {name: np.ascontiguousarray(value[index]) for name, value in rows.items()} if index.size else {}


def _ints(index: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in index)


def without_rows(samples: Sequence[dict[str, np.ndarray]], rows: dict[str, np.ndarray] | None,
                 ) -> tuple[list[dict[str, np.ndarray]], int]:
    """``samples`` without any row equal to one of ``rows`` (the ``eval_data()`` rows), and how many were dropped.

    Why: ``eval_data()`` rows judge and score, never steer. A model file whose calibration data
    shares rows with its eval data would calibrate on the rows its verdict and accuracy are measured on.
    """
    from optpipe.compare.output_kinds import row_keys

    if not rows:
        return list(samples), 0
    forbidden = set(row_keys(rows))
    kept: list[dict[str, np.ndarray]] = []
    dropped = 0
    for sample in samples:
        try:
            keep = np.array([key not in forbidden for key in row_keys(sample)], dtype=bool)
        except (KeyError, IndexError, ValueError):  # another layout (names, ranks): it cannot hold eval rows
            kept.append(sample)
            continue
        dropped += int(np.count_nonzero(~keep))
        if keep.all():
            kept.append(sample)
        elif keep.any():
            kept.append({name: np.ascontiguousarray(value[keep]) for name, value in sample.items()})
    return kept, dropped
