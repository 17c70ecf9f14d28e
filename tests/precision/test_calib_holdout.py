"""Held-out calibration rows: a deterministic share becomes golden rows and is never calibrated on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import optpipe
from optpipe.core.tensor_spec import TensorSpec
from optpipe.precision.holdout import heldout_count, split_rows

SPECS = [TensorSpec("x", ("batch", 6), "float32")]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def _rows(n: int) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((n, 6)).astype(np.float32)


def test_counts() -> None:
    assert [heldout_count(n) for n in (0, 10, 64, 128, 400, 1000)] == [0, 5, 32, 32, 64, 64]


def test_split_is_deterministic_disjoint_and_keeps_the_data_batch() -> None:
    rows = _rows(100)
    samples = [{"x": rows[i : i + 4]} for i in range(0, 100, 4)]
    first, second = split_rows(samples, SPECS), split_rows(samples, SPECS)
    assert first is not None and second is not None and first.indices == second.indices
    assert len(first.indices) == 32
    calibrated = np.concatenate([s["x"] for s in first.calibration])
    assert calibrated.shape == (68, 6) and all(s["x"].shape[0] <= 4 for s in first.calibration)
    held = {tuple(r) for r in first.heldout["x"].tolist()}
    assert not held & {tuple(r) for r in calibrated.tolist()}  # never calibrated on
    np.testing.assert_array_equal(first.heldout["x"], rows[list(first.indices)])


def test_rows_of_different_lengths_are_not_split() -> None:
    specs = [TensorSpec("ids", ("batch", "seq"), "int64")]
    samples = [{"ids": np.zeros((1, 5), np.int64)}, {"ids": np.zeros((1, 7), np.int64)}]
    assert split_rows(samples, specs) is None


@pytest.mark.slow
def test_build_judges_held_out_calibration_rows_and_records_the_split(tmp_path: Path) -> None:
    # Before: golden data was the 2 example rows (and copies); the 128 calibration rows were never judged.
    rows = _rows(128)
    calib = [{"input_0": rows[i : i + 1]} for i in range(128)]  # batch-1 samples
    report = optpipe.build(Net(), (torch.randn(2, 6),), out_dir=tmp_path / "o", precisions=("fp32", "int8"),
                           calib_data=calib, benchmark=False, log=lambda _m: None)
    data = report.to_dict()
    holdout = data["build"]["holdout"]
    assert holdout["rows"] == 128 and holdout["heldout_rows"] == 32 and holdout["calibration_rows"] == 96
    assert holdout["source"] == "<in-memory>" and "default_rng(0)" in holdout["rule"]
    for variant in data["variants"]:
        output = variant["parity"]["outputs"]["output_0"]
        assert output["heldout_rows"] == 32
        assert output["samples"] >= 32 + 2
    int8 = next(v for v in data["variants"] if v["precision"] == "int8")
    assert int8["passes"]["int8"]["calibration"]["samples"] == 96  # the held-out rows are not calibrated on
