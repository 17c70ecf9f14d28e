"""Fp16Pass on a real export: converted, guard record and per-layer table always present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from optpipe.passes.fp16 import Fp16Config, Fp16Pass

from optpipe.builder.options import parse_build_options as opts
from optpipe.builder.pass_configs import fp16_pass
from optpipe.core.errors import UserInputError


def test_from_options() -> None:
    assert fp16_pass(opts()).config == Fp16Config()
    assert fp16_pass(opts(calib_data=Path("c.npz"), no_guard=True)).config.calib_data == "c.npz"
    with pytest.raises(UserInputError, match="guard-max-keep"):
        fp16_pass(opts(guard_max_keep=-1))


@pytest.mark.slow
def test_fp16_pass_on_tiny_net(tmp_path: Path, toy: object) -> None:
    import torch
    from conftest import build_context, torch_artifact
    from optpipe.passes.export_onnx import ExportOnnx

    model = toy.TinyNet().eval()  # type: ignore[attr-defined]
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    ctx = build_context(tmp_path, model, {"x": x}, ("logits",))
    onnx_artifact = ExportOnnx()(torch_artifact(ctx), ctx).artifact  # type: ignore[arg-type]
    result = Fp16Pass()(onnx_artifact, ctx)  # type: ignore[arg-type]
    assert result.artifact.path == tmp_path / "fp16" / "model.onnx" and result.artifact.precision == "fp16"
    metrics = result.metrics
    assert metrics["status"] == "converted" and metrics["guard"]["passed"] and metrics["layer_errors"]
    assert metrics["kept_nodes"] == [] and metrics["overflow_tensors"] == {}
    del torch
