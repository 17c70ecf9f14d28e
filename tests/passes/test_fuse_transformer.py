"""The transformer fusion pass (ONNX Runtime's transformer optimizer): fused ops, parity, no-op, cpu target only."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from optpipe.passes.fuse_transformer import (
    FuseTransformerConfig,
    FuseTransformerPass,
    detect_model_type,
    shape_inference_works,
)
from torch import nn

from optpipe.builder.options import parse_build_options
from optpipe.builder.plan import variant_passes
from optpipe.builder.selection import auto_precisions
from optpipe.core.artifact import Artifact, ArtifactKind, sha256_files
from optpipe.core.errors import PassError, UserInputError, VariantSkipped
from optpipe.core.tensor_spec import TensorSpec
from optpipe.infra.pass_base import BuildContext
from optpipe.runtime.target import get_target


class TinyBert(nn.Module):
    """A 1-layer BERT encoder with random weights, written as Hugging Face's BERT computes it.

    Embeddings (word + position) -> LayerNorm; attention with the classic additive mask
    ``(1 - mask) * -10000``; residual + LayerNorm; Linear -> exact Gelu -> Linear; residual + LayerNorm.
    Written out (no transformers dependency in the test extras) so the optimizer's BERT patterns apply.
    """

    def __init__(self, hidden: int = 32, heads: int = 2) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.heads, self.head_dim = heads, hidden // heads
        self.word = nn.Embedding(100, hidden)
        self.position = nn.Embedding(64, hidden)
        self.ln0, self.ln1, self.ln2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.q, self.k, self.v, self.o = (nn.Linear(hidden, hidden) for _ in range(4))
        self.up, self.down = nn.Linear(hidden, 2 * hidden), nn.Linear(2 * hidden, hidden)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).permute(0, 2, 1, 3)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1]).unsqueeze(0)
        x = self.ln0(self.word(input_ids) + self.position(positions))
        bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim) + bias
        context = torch.matmul(scores.softmax(-1), v).permute(0, 2, 1, 3).contiguous()
        context = context.view(x.shape[0], x.shape[1], self.heads * self.head_dim)
        x = self.ln1(self.o(context) + x)
        return self.ln2(self.down(nn.functional.gelu(self.up(x))) + x)


class PooledTinyBert(TinyBert):
    """TinyBert with sentence-transformers' head: mean pooling over real tokens, then L2 normalisation."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = super().forward(input_ids, attention_mask)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2.0, dim=1)


class SmallCnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def _feeds() -> dict[str, np.ndarray]:
    ids = np.random.default_rng(0).integers(1, 100, (2, 16)).astype(np.int64)
    mask = np.ones((2, 16), np.int64)
    mask[1, 10:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter: a fast, plain graph
def _export(model: nn.Module, feeds: dict[str, np.ndarray], path: Path, opset: int = 17) -> Artifact:
    axes = {name: {0: "batch", 1: "seq"} for name in feeds} if opset != 17 else None
    torch.onnx.export(model, tuple(torch.from_numpy(v) for v in feeds.values()), str(path), input_names=list(feeds),
                      output_names=["y"], dynamo=False, opset_version=opset, dynamic_axes=axes)  # fmt: skip
    specs = tuple(TensorSpec(k, v.shape, str(v.dtype)) for k, v in feeds.items())
    return Artifact(ArtifactKind.ONNX, path, "0" * 64, specs, (TensorSpec("y", (), "float32"),), precision="fp32+fused")


def _ctx(tmp_path: Path) -> BuildContext:
    return BuildContext(work_dir=tmp_path / "build", target=get_target("cpu"), input_specs=(), output_names=("y",))


def _run(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, feeds)[0])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_fuses_a_bert_layer_and_keeps_its_outputs(tmp_path: Path) -> None:
    feeds = _feeds()
    artifact = _export(TinyBert(), feeds, tmp_path / "bert.onnx")
    assert detect_model_type(onnx.load(str(artifact.path))) == "bert"
    result = FuseTransformerPass()(artifact, _ctx(tmp_path))
    assert result.modified
    fused = result.metrics["fused"]
    assert fused.get("SkipLayerNormalization", 0) >= 1 and fused.get("BiasGelu", 0) + fused.get("FastGelu", 0) >= 1
    after = result.metrics["ops_after"]
    assert after["com.microsoft.SkipLayerNormalization"] == fused["SkipLayerNormalization"]
    assert result.metrics["ops_before"]["LayerNormalization"] > after.get("LayerNormalization", 0)
    assert result.artifact.path == tmp_path / "build" / "fp32+fused" / "fused.onnx"
    np.testing.assert_allclose(_run(result.artifact.path, feeds), _run(artifact.path, feeds), atol=1e-4)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_pass_fuses_exactly_what_the_optimizer_makes_of_the_model_itself(tmp_path: Path) -> None:
    """The optimizer runs on a copy with external weights (less memory): the same graph and weights result."""
    from onnx import numpy_helper
    from optpipe.passes.fuse_transformer import run_optimizer

    artifact = _export(TinyBert(), _feeds(), tmp_path / "bert.onnx")
    ours = onnx.load(str(FuseTransformerPass()(artifact, _ctx(tmp_path)).artifact.path))
    direct = run_optimizer(Path(artifact.path), "bert", 0, 0)
    assert [(n.op_type, list(n.input), list(n.output)) for n in ours.graph.node] == [
        (n.op_type, list(n.input), list(n.output)) for n in direct.graph.node]
    weights = {t.name: numpy_helper.to_array(t) for t in direct.graph.initializer}
    assert {t.name for t in ours.graph.initializer} == set(weights)
    assert all(np.array_equal(numpy_helper.to_array(t), weights[t.name]) for t in ours.graph.initializer)
    assert not list(tmp_path.glob("build/**/*.data"))  # the fused model is one self-contained file


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_optimizer_infers_shapes_on_the_graph_without_its_weights(tmp_path: Path, monkeypatch: Any) -> None:
    """Each shape-inference helper of the optimizer copies the graph without its large weights, and the fused
    file is the same bytes as with ORT's helpers copying the whole model (what held 1.3 GB for a 209 MB model)."""
    import contextlib
    import hashlib
    import importlib

    from optpipe.passes import fuse_transformer

    artifact = _export(TinyBert(hidden=64), _feeds(), tmp_path / "bert.onnx")
    import onnxruntime.transformers.optimizer  # noqa: F401  # puts its top-level modules on the path

    helper = importlib.import_module("shape_infer_helper").SymbolicShapeInferenceHelper
    original, largest = helper._preprocess, []

    def recorded(self: Any, in_mp: Any) -> None:
        largest.append(max(t.ByteSize() for t in in_mp.graph.initializer))
        original(self, in_mp)

    monkeypatch.setattr(helper, "_preprocess", recorded)

    def fused_digest(folder: str) -> str:
        path = FuseTransformerPass()(artifact, _ctx(tmp_path / folder)).artifact.path
        return hashlib.sha256(path.read_bytes()).hexdigest()

    ours = fused_digest("skeleton")
    assert largest and max(largest) <= 4096 + 256  # the 64 x 128 weights (32 KB) stayed out of every copy
    largest.clear()
    monkeypatch.setattr(fuse_transformer, "_shape_inference_on_skeletons", contextlib.nullcontext)
    assert fused_digest("whole") == ours
    assert max(largest) >= 64 * 128 * 4  # ORT's own helpers copied them


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_residual_layernorm_fuses_when_ort_shape_inference_fails_on_the_head(tmp_path: Path) -> None:
    """The opset-18 normalisation head (ReduceL2 -> Clip -> Expand) stops ONNX Runtime's symbolic shape inference,
    which made the optimizer skip every SkipLayerNormalization (all-MiniLM-L6-v2: 0 of 12)."""
    feeds = _feeds()
    artifact = _export(PooledTinyBert(), feeds, tmp_path / "pooled.onnx", opset=18)
    assert not shape_inference_works(onnx.load(str(artifact.path)))
    result = FuseTransformerPass()(artifact, _ctx(tmp_path))
    assert result.metrics["shape_inference"] is False
    assert result.metrics["fused"].get("SkipLayerNormalization", 0) == 2, result.metrics["fused"]
    np.testing.assert_allclose(_run(result.artifact.path, feeds), _run(artifact.path, feeds), atol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_second_fused_variant_of_a_build_reuses_the_first_fusion(tmp_path: Path, monkeypatch: Any) -> None:
    """fp32+fused and int8-dynamic+fused fuse the same graph: the optimizer runs once per build (BERT-base: 9 s)."""
    import optpipe.passes.fuse_transformer as fuse_module

    calls: list[Path] = []
    real = fuse_module.run_optimizer
    monkeypatch.setattr(fuse_module, "run_optimizer",
                        lambda src, *a, **k: calls.append(Path(src)) or real(src, *a, **k))
    feeds, ctx = _feeds(), _ctx(tmp_path)
    artifact = _export(TinyBert(), feeds, tmp_path / "bert.onnx")
    first = FuseTransformerPass(FuseTransformerConfig(skip_when_unchanged=True))(artifact, ctx)
    second = FuseTransformerPass(FuseTransformerConfig(skip_when_unchanged=True))(
        artifact.derive(precision="int8-dynamic+fused"), ctx)
    assert len(calls) == 1
    assert second.artifact.path == tmp_path / "build" / "int8-dynamic+fused" / "fused.onnx"
    assert second.artifact.sha256 == first.artifact.sha256 == sha256_files([second.artifact.path])
    assert second.metrics["shared_with"] == "fp32+fused" and second.metrics["fused"] == first.metrics["fused"]
    np.testing.assert_allclose(_run(second.artifact.path, feeds), _run(artifact.path, feeds), atol=1e-4)
    other = FuseTransformerPass(FuseTransformerConfig(skip_when_unchanged=True))(artifact, _ctx(tmp_path / "b"))
    assert len(calls) == 2 and "shared_with" not in other.metrics  # another build fuses on its own


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_cnn_is_left_alone_and_its_fused_variant_skipped(tmp_path: Path) -> None:
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)}
    artifact = _export(SmallCnn(), feeds, tmp_path / "cnn.onnx")
    result = FuseTransformerPass()(artifact, _ctx(tmp_path))
    assert result.modified is False and result.artifact is artifact
    assert result.metrics["status"] == "nothing_fused" and result.metrics["model_type"] is None
    in_variant = FuseTransformerPass(FuseTransformerConfig(skip_when_unchanged=True))
    with pytest.raises(PassError) as raised:
        in_variant(artifact, _ctx(tmp_path))
    assert isinstance(raised.value.cause, VariantSkipped)
    assert "nothing to fuse" in raised.value.cause.reason


def test_fused_variants_are_cpu_only_and_optional() -> None:
    options = parse_build_options()
    assert "int8-dynamic+fused" in auto_precisions("cpu") and "fp32+fused" in auto_precisions("cpu")
    assert not any(p.endswith("+fused") for p in auto_precisions("tensorrt"))  # the portable ONNX stays unfused
    assert not any(p.endswith("+fused") for p in auto_precisions("cpu", fuse=False))
    names = [p.name for p in variant_passes("int8-dynamic+fused", get_target("cpu"), options, engine=False)]
    assert names[:2] == ["fuse-transformer", "int8-dynamic"]
    with pytest.raises(UserInputError, match="cpu target only"):
        variant_passes("fp32+fused", get_target("tensorrt"), options, engine=False)
    with pytest.raises(UserInputError, match="--fuse"):
        parse_build_options(fuse="bertt")
    assert parse_build_options(precisions="int8-dynamic+fused", fuse="bert").fuse == "bert"


@pytest.mark.slow
def test_build_ships_a_fused_variant_beside_the_unfused_one(tmp_path: Path) -> None:
    from optpipe.builder.run import build

    feeds = _feeds()
    report: Any = build(TinyBert(), feeds, out_dir=tmp_path / "out", precisions=("fp32", "fp32+fused"),
                        output_names=("y",), exporter="torchscript", benchmark=False, log=lambda _m: None)
    fused = next(v for v in report.variants if v["precision"] == "fp32+fused")
    assert fused["passed"], fused["failures"]
    assert fused["passes"]["fuse-transformer"]["fused"].get("SkipLayerNormalization", 0) >= 1
    engine = onnx.load(str(report.out_dir / fused["artifact"]))
    assert any(n.op_type == "SkipLayerNormalization" for n in engine.graph.node)
    plain = next(v for v in report.variants if v["precision"] == "fp32")
    assert plain["artifact"] != fused["artifact"]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")
def test_attention_fuses_on_a_transformers_bert_and_still_masks_padding(tmp_path: Path) -> None:
    """transformers 5's BertModel, exported by dynamo: Attention fuses (after the mask rewrite), and padded rows
    (right and left padding, several lengths) give what the unfused graph gives."""
    pytest.importorskip("transformers")
    from tests.onnx.test_attention_mask import export_tiny_bert, padded_masks

    path = export_tiny_bert(tmp_path / "bert.onnx")
    artifact = Artifact(ArtifactKind.ONNX, path, "0" * 64, (), (), precision="fp32+fused")
    result = FuseTransformerPass()(artifact, _ctx(tmp_path))
    assert result.metrics["mask_rewrite"]["rewritten"] == 1
    assert result.metrics["fused"].get("Attention") == 2, result.metrics["fused"]  # one per layer
    assert result.metrics["fused"].get("SkipLayerNormalization") == 4
    assert "Softmax" not in result.metrics["ops_after"]
    for mask in padded_masks():
        ids = np.random.default_rng(mask.size).integers(1, 99, mask.shape).astype(np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        np.testing.assert_allclose(_run(result.artifact.path, feeds), _run(path, feeds), atol=1e-5)
        unmasked = _run(result.artifact.path, {**feeds, "attention_mask": np.ones_like(mask)})
        assert not np.allclose(unmasked, _run(path, feeds), atol=1e-3)  # padding really is masked
