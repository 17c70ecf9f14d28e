"""Dynamic INT8 (``--precision int8-dynamic``): integer ops, no calibration data, gate, guard, TensorRT refused."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from optpipe.passes.int8_dynamic import Int8DynamicPass
from torch import nn

from optpipe.build_options import parse_build_options
from optpipe.builder import PRECISIONS, build
from optpipe.errors import UserInputError
from optpipe.parity import DEFAULT_TOLERANCES
from optpipe.precision.accuracy import auto_precisions
from optpipe.precision.dynamic_quantize import quantize_int8_dynamic
from optpipe.registry import PASSES
from optpipe.target import get_target


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class OutlierMlp(Mlp):
    """fc2's input has one channel 1e4x larger than the rest (its weight column 1e-4x smaller).

    The function is ordinary, but per-tensor dynamic activation quantization of fc2's input spends
    all 256 levels on the outlier channel and rounds every other channel to zero.
    """

    def __init__(self) -> None:
        super().__init__()
        scale = torch.ones(64)
        scale[0] = 1e4
        self.scale: torch.Tensor
        self.register_buffer("scale", scale)
        with torch.no_grad():
            self.fc2.weight[:, 0] /= 1e4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)) * self.scale)


# reduce_range is pinned: left to this CPU (VNNI or not) the quantized weights, and so the gate's verdict, would
# differ between CI machines (AMD without VNNI, Intel/AMD with AVX-512 VNNI).
PINNED = {"int8-dynamic": {"reduce_range": True}}


def _build(tmp_path: Path, model: nn.Module, **kwargs: Any) -> Any:
    x = np.random.default_rng(0).standard_normal((4, 32)).astype(np.float32)
    kwargs.setdefault("pass_options", PINNED)
    kwargs.setdefault("require_judged", False)  # 4 rows: top-1 of the Linear-made output cannot judge (issue 17)
    return build(model, {"x": x}, out_dir=tmp_path / "out", precisions=("int8-dynamic",), output_names=("y",),
                 benchmark=False, log=lambda _m: None, **kwargs)  # fmt: skip


def _variant(report: Any) -> dict[str, Any]:
    return next(v for v in report.variants if v["precision"] == "int8-dynamic")


def test_wired_everywhere() -> None:
    assert "int8-dynamic" in PRECISIONS
    assert "int8-dynamic" in auto_precisions("cpu") and "int8-dynamic" not in auto_precisions("tensorrt")
    assert DEFAULT_TOLERANCES["int8-dynamic"] == DEFAULT_TOLERANCES["int8"]
    assert PASSES["int8-dynamic"] == ("int8_dynamic", "Int8DynamicPass")


def test_tensorrt_target_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="explicit Q/DQ"):
        Int8DynamicPass.from_options(parse_build_options(), get_target("tensorrt"))
    with pytest.raises(UserInputError, match="explicit Q/DQ"):  # at assembly, before any export
        _build(tmp_path, Mlp(), target="tensorrt")
    assert not (tmp_path / "out").exists()


def test_builds_without_calibration_data_and_passes_the_gate(tmp_path: Path) -> None:
    report = _build(tmp_path, Mlp())  # no calib_data, no synthetic_calib: none needed
    variant = _variant(report)
    assert variant["passed"], variant["failures"]
    assert variant["onnx"] == "int8-dynamic/model.onnx"
    metrics = variant["passes"]["int8-dynamic"]
    assert metrics["status"] == "quantized" and metrics["method"] == "dynamic"
    assert metrics["quantized"] == metrics["quantizable"] == 2  # both Linear layers (Gemm rewritten to MatMul)
    assert metrics["kept_nodes"] == [] and metrics["guard"]["history"][0]["passed"] is True
    ops = collections.Counter(n.op_type for n in onnx.load(str(report.out_dir / variant["onnx"])).graph.node)
    assert ops["DynamicQuantizeLinear"] == 2 and ops["MatMulInteger"] == 2, ops
    assert "QuantizeLinear" not in ops and "DequantizeLinear" not in ops  # no calibrated Q/DQ
    assert not (report.out_dir / "int8-dynamic" / "calibration.json").exists()


def test_guard_keeps_the_outlier_layer(tmp_path: Path) -> None:
    report = _build(tmp_path, OutlierMlp(), guard_max_keep=0.5)
    variant = _variant(report)
    guard = variant["passes"]["int8-dynamic"]["guard"]
    assert guard["history"][0]["passed"] is False  # naive dynamic INT8 fails the gate ...
    assert guard["history"][-1]["passed"] is True and variant["passed"]  # ... keeping fc2 in FP32 repairs it
    kept = variant["passes"]["int8-dynamic"]["kept_nodes"]
    assert len(kept) == 1 and kept[0]["op_type"] in ("Gemm", "MatMul"), kept
    assert any("kept 1 node" in w for w in report.warnings)
    ops = collections.Counter(n.op_type for n in onnx.load(str(report.out_dir / variant["onnx"])).graph.node)
    assert ops["MatMulInteger"] == 1, ops  # fc1 is still quantized


def test_no_guard_reports_the_failure(tmp_path: Path) -> None:
    report = _build(tmp_path, OutlierMlp(), no_guard=True)
    variant = _variant(report)
    assert not variant["passed"] and variant["passes"]["int8-dynamic"]["status"] == "gate_failed"
    assert variant["passes"]["int8-dynamic"]["kept_nodes"] == []


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter: a fast, plain graph
def test_excluding_everything_is_nothing_quantizable(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    torch.onnx.export(Mlp(), (torch.zeros(2, 32),), str(src), input_names=["x"], dynamo=False)
    names = [n.name for n in onnx.load(str(src)).graph.node if n.op_type in ("Gemm", "MatMul")]
    assert len(names) == 2
    result = quantize_int8_dynamic(src, tmp_path / "q.onnx", exclude_nodes=names)
    assert result.status == "nothing_quantizable" and result.path is None
    assert not (tmp_path / "q.onnx").exists()
    one = quantize_int8_dynamic(src, tmp_path / "q.onnx", exclude_nodes=names[1:])
    assert one.status == "quantized" and one.quantized_count == 1
