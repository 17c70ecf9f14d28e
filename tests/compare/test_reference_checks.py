"""A reference that is all zero, constant or blind to its input is flagged; tied logits get no top-1 verdict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import optpipe
from optpipe import DynamicDim
from optpipe.compare.golden import GoldenCase
from optpipe.compare.parity import Tolerance, compare_output
from optpipe.compare.reference_checks import reference_warnings

MODELS = Path(__file__).resolve().parents[1] / "fixtures" / "models" / "sweep_models.py"


def _case(inputs: np.ndarray, outputs: np.ndarray) -> GoldenCase:
    return GoldenCase("example", {"x": inputs}, {"logits": outputs})


def test_reference_warnings() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 8)).astype(np.float32)
    assert reference_warnings([_case(x, x[:, :5] * 2)]) == []
    (zero,) = reference_warnings([_case(x, np.zeros((4, 5), np.float32))])
    assert "all zeros" in zero
    (constant,) = reference_warnings([_case(x, np.full((4, 5), 3.0, np.float32))])
    assert "constant 3" in constant
    (blind,) = reference_warnings([_case(x, np.tile(np.arange(5, dtype=np.float32), (4, 1)))])
    assert "does not depend on the input" in blind
    same_rows = np.tile(x[:1], (4, 1))  # identical input rows: equal outputs say nothing about dependence
    assert reference_warnings([_case(same_rows, np.tile(np.arange(5.0), (4, 1)))]) == []


def test_top1_not_reported_on_tied_logits() -> None:
    zeros = np.zeros((4, 5), np.float32)
    parity = compare_output([zeros], [zeros], Tolerance(min_cosine=0.99, min_top1=0.99))
    assert parity.top1_agreement is None
    assert parity.top1_note is not None and "not meaningful" in parity.top1_note
    mixed = np.array([[0, 0, 0], [1, 3, 2]], np.float32)  # row 0 tied, row 1 decided
    parity = compare_output([mixed], [mixed + np.array([[0, 1, 0], [0, 0, 0]], np.float32)], Tolerance())
    assert parity.top1_agreement == 1.0 and parity.top1_note == "1 of 2 rows left out: their reference scores tie"


@pytest.mark.slow
@pytest.mark.parametrize(("model", "expected"), [("ZeroHead", "all zeros"),
                                                 ("ConstantHead", "does not depend on the input")])
def test_build_warns_on_meaningless_reference(tmp_path: Path, model: str, expected: str) -> None:
    from conftest import load_file_module

    module = getattr(load_file_module(MODELS), model)()
    lines: list[str] = []
    torch.manual_seed(0)
    report = optpipe.build(module, {"x": torch.randn(2, 8)}, out_dir=tmp_path / "out", benchmark=False,
                           output_names=["logits"], dynamic=[DynamicDim("batch", 1, 2, 4)], log=lines.append)
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert any(expected in w for w in data["warnings"])
    assert any(expected in line and line.startswith("optpipe: warning:") for line in lines)
    logits = data["variants"][0]["parity"]["outputs"]["logits"]
    if model == "ZeroHead":
        assert logits["top1_agreement"] is None and "not meaningful" in logits["top1_note"]
    assert report.passed  # FP32 parity still holds; the warning says what it is worth
