"""Issue 20: weight-only INT4 is judged by the lossy precisions' bars; a model INT4 breaks is REJECTED.

The wrong-verdict case: an MLP whose second layer reads one input channel scaled down 100x and holds
that channel's weights 100x larger (the function is the Mlp's). Every 4-bit block of that layer then
spends its 15 steps on the one large weight and rounds the block's other weights to zero: output
cosine about 0.86, the worst row 0.54. Without the guard the build must reject it (gate_failed, exit
status failed); with the guard, keeping that one layer in FP32 must repair it; its twin (the plain
Mlp, cosine 0.997) must pass untouched.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from optpipe.builder.run import build

sys.path.insert(0, str(Path(__file__).parent.parent / "passes"))
from test_int8_dynamic import Mlp  # Linear -> ReLU -> Linear, 32 -> 64 -> 10, seeded: the twin


class OutlierWeightMlp(Mlp):
    """fc2's weights on input channel 0 are 100x larger, and that channel 100x smaller: the same function."""

    def __init__(self, factor: float = 100.0) -> None:
        super().__init__()
        scale = torch.ones(64)
        scale[0] = 1.0 / factor
        self.scale: torch.Tensor
        self.register_buffer("scale", scale)
        with torch.no_grad():
            self.fc2.weight[:, 0] *= factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)) * self.scale)


def _build(tmp_path: Path, model: nn.Module, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
    x = np.random.default_rng(0).standard_normal((8, 32)).astype(np.float32)
    report = build(model, {"x": x}, out_dir=tmp_path / "out", precisions=("int4-weight",), output_names=("y",),
                   benchmark=False, log=lambda _m: None, require_judged=False, **kwargs)  # fmt: skip
    return report, next(v for v in report.variants if v["precision"] == "int4-weight")


@pytest.mark.slow
def test_a_model_int4_breaks_is_rejected(tmp_path: Path) -> None:
    report, variant = _build(tmp_path, OutlierWeightMlp(), no_guard=True)
    assert not variant["passed"] and variant["passes"]["int4-weight"]["status"] == "gate_failed"
    assert any("cosine" in failure for failure in variant["failures"]), variant["failures"]
    assert not report.passed and report.exit_code != 0


@pytest.mark.slow
def test_the_guard_repairs_it_by_keeping_the_broken_layer(tmp_path: Path) -> None:
    # max_size_fraction 1: this MLP's 8-bit fc2 (K=64 in one block of 128) costs more than a quarter of its FP32
    # weights leave above 4 bits; the default budget rejects it (the next test)
    _, variant = _build(tmp_path, OutlierWeightMlp(), pass_options={"int4-weight": {"max_size_fraction": 1.0}})
    guard = variant["passes"]["int4-weight"]["guard"]
    assert guard["history"][0]["passed"] is False and guard["history"][-1]["passed"] is True
    kept = variant["passes"]["int4-weight"]["kept_nodes"]
    assert variant["passed"] and len(kept) == 1, kept


@pytest.mark.slow
def test_the_size_budget_that_cannot_hold_the_repair_rejects_it_in_one_line(tmp_path: Path) -> None:
    report, variant = _build(tmp_path, OutlierWeightMlp())
    assert not variant["passed"] and variant["passes"]["int4-weight"]["status"] == "gate_failed"
    assert any("size budget" in w and "max_size_fraction" in w for w in report.warnings), report.warnings


@pytest.mark.slow
def test_twin_plain_mlp_passes(tmp_path: Path) -> None:
    report, variant = _build(tmp_path, Mlp(), no_guard=True)
    assert variant["passed"], variant["failures"]
    assert report.passed and report.exit_code == 0
