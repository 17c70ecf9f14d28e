"""The exporter fallback reason is kept whole in report.json and summarised on one console line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import build_context, torch_artifact
from optpipe.passes.export_onnx import ExportConfig, ExportOnnx
from torch import nn

from optpipe.core.errors import full_message, summary_line
from optpipe.core.tensor_spec import DynamicDim

ORT_MESSAGE = (
    "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions for input: x for the following indices\n"
    " index: 0 Got: 1 Expected: 2\n"
    " Please fix either the inputs/outputs or the model."
)


class Attention(nn.Module):
    """nn.MultiheadAttention: with a batch-1 example torch 2.13's dynamo exporter freezes the batch at 1."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(x, x, x, need_weights=False)[0]


def test_summary_line_keeps_the_indented_detail() -> None:
    line = summary_line(RuntimeError(ORT_MESSAGE))
    assert "\n" not in line
    assert "Got invalid dimensions for input: x" in line
    assert "index: 0 Got: 1 Expected: 2" in line
    assert "Please fix" not in line


def test_full_message_keeps_every_line() -> None:
    wrapped = RuntimeError("export failed")
    wrapped.__cause__ = ValueError(ORT_MESSAGE)
    text = full_message(wrapped, root_cause=True)
    assert text.startswith("ValueError: ")
    assert "index: 0 Got: 1 Expected: 2" in text and "Please fix" in text


@pytest.mark.slow
def test_frozen_batch_fallback_reason_is_whole(tmp_path: Path) -> None:
    example = torch.randn(1, 4, 8).numpy()
    ctx = build_context(tmp_path, Attention().eval(), {"x": example}, ("y",), DynamicDim("batch", 1, 4, 8))
    result = ExportOnnx(ExportConfig())(torch_artifact(ctx), ctx)  # type: ignore[arg-type]
    if result.metrics["exporter"] == "dynamo":  # a torch release that no longer freezes the batch
        pytest.skip("this torch's dynamo exporter keeps the batch of nn.MultiheadAttention dynamic")
    reason = result.metrics["fallback_reason"]
    assert "Got invalid dimensions for input: x" in reason
    assert "index: 0 Got: 2 Expected: 1" in reason  # the line that explains the failure survives
    (warning,) = result.warnings
    assert "\n" not in warning and "index: 0 Got: 2 Expected: 1" in warning
