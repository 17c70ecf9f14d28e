"""Export pass: dynamo first, TorchScript fallback, frozen batches caught."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import onnx
import pytest
import torch
from conftest import build_context, torch_artifact
from optpipe.passes.export_onnx import ExportConfig, ExportOnnx

from optpipe.core.artifact import ArtifactKind
from optpipe.core.errors import PassError
from optpipe.core.tensor_spec import DynamicDim

BATCH = DynamicDim("batch", 1, 4, 8)


@pytest.mark.slow
def test_dynamo_export_with_dynamic_batch(tmp_path: Path, toy: ModuleType) -> None:
    ctx = build_context(tmp_path, toy.TinyNet().eval(), {"x": toy.example_inputs()[0].numpy()}, ("logits",), BATCH)
    result = ExportOnnx()(torch_artifact(ctx), ctx)
    assert result.artifact.kind is ArtifactKind.ONNX
    assert result.metrics["exporter"] == "dynamo"
    assert result.metrics["fallback_reason"] is None
    assert result.metrics["checked_batches"] == [2, 1, 3]
    model = onnx.load(str(result.artifact.path))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [o.name for o in model.graph.output] == ["logits"]
    assert not result.metrics["external_data"]


@pytest.mark.slow
def test_falls_back_to_torchscript_and_says_why(tmp_path: Path, toy: ModuleType) -> None:
    ctx = build_context(tmp_path, toy.Branchy(), {"x": torch.randn(2, 3).numpy()}, ("y",), BATCH)
    result = ExportOnnx()(torch_artifact(ctx), ctx)
    assert result.metrics["exporter"] == "torchscript"
    assert "dynamo" in result.metrics["fallback_reason"]
    assert "data-dependent" in result.metrics["fallback_reason"]
    assert result.warnings and "used TorchScript" in result.warnings[0]


@pytest.mark.slow
def test_frozen_batch_is_caught_and_both_errors_reported(tmp_path: Path, toy: ModuleType) -> None:
    ctx = build_context(tmp_path, toy.IntBatch(), {"x": torch.randn(2, 3).numpy()}, ("y",), BATCH)
    expected = r"no exporter could export the model: dynamo: .*batch 1.* torchscript: "
    with pytest.raises(PassError, match=expected) as info:
        ExportOnnx()(torch_artifact(ctx), ctx)
    assert info.value.exit_code == 2


@pytest.mark.slow
def test_same_model_with_static_batch_exports(tmp_path: Path, toy: ModuleType) -> None:
    ctx = build_context(tmp_path, toy.IntBatch(), {"x": torch.randn(2, 3).numpy()}, ("y",))
    result = ExportOnnx(ExportConfig(exporter="dynamo"))(torch_artifact(ctx), ctx)
    assert result.metrics["checked_batches"] == [2]


def test_unknown_exporter_is_refused(tmp_path: Path, toy: ModuleType) -> None:
    ctx = build_context(tmp_path, toy.TinyNet().eval(), {"x": toy.example_inputs()[0].numpy()}, ("logits",))
    with pytest.raises(PassError, match="unknown exporter 'jit'"):
        ExportOnnx(ExportConfig(exporter="jit"))(torch_artifact(ctx), ctx)


def test_the_exported_graph_lets_go_of_the_pytorch_weights(tmp_path: Path, toy: ModuleType) -> None:
    """After the export no graph object of the exporter still wraps a parameter of the model.

    onnxscript's module-level rewrite rules keep the last graph they matched; its initializers wrapped the
    parameters, so the weights stayed resident all build long and could not be paged out (BERT-base 0.42 GB).
    """
    import gc

    model = toy.TinyNet().eval()
    ctx = build_context(tmp_path, model, {"x": toy.example_inputs()[0].numpy()}, ("logits",))
    ExportOnnx(ExportConfig(exporter="dynamo"))(torch_artifact(ctx), ctx)
    gc.collect()
    storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    wrapping = [o for o in gc.get_objects() if type(o).__name__ == "TorchTensor"
                and isinstance(getattr(o, "raw", None), torch.Tensor)
                and o.raw.untyped_storage().data_ptr() in storages]  # fmt: skip
    assert not wrapping
