"""Tests for optpipe.precision.guard.localize: a model built to break INT8 and the guard that repairs it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from optpipe.precision import onnx_graph
from optpipe.precision.calib_data import synthetic_samples
from optpipe.precision.guard.localize import guarded_quantize, per_layer_errors
from optpipe.precision.static_quantize import quantize_int8

pytestmark = pytest.mark.slow  # every test here reads the module-scoped exported outlier model


@pytest.fixture(scope="module")
def outlier_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Conv stack where channel 0 is scaled x1e4 before conv3 and conv3 undoes it in its weights.

    FP32 computes the same function as without the scaling, but a per-tensor
    INT8 range for conv3's input is set by channel 0, so the other channels
    quantize to zero: conv3 is the node that breaks.
    """
    import torch

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)
            self.conv3 = torch.nn.Conv2d(8, 8, 3, padding=1)
            self.conv4 = torch.nn.Conv2d(8, 8, 3, padding=1)
            scale = torch.ones(1, 8, 1, 1)
            scale[0, 0] = 1e4
            self.register_buffer("scale", scale)
            with torch.no_grad():
                self.conv3.weight[:, 0] /= 1e4

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.conv1(x))
            x = torch.relu(self.conv2(x))
            x = torch.relu(self.conv3(x * self.scale))
            return self.conv4(x)

    path = tmp_path_factory.mktemp("outlier") / "outlier.onnx"
    program = torch.onnx.export(
        Net().eval(), (torch.randn(2, 3, 16, 16),), dynamo=True, dynamic_shapes=({0: "batch"},), verbose=False
    )
    assert program is not None
    program.save(str(path))
    return path


def _data(path: Path, seed: int) -> list[dict[str, np.ndarray]]:
    return synthetic_samples(onnx_graph.input_specs(path), 16, seed, dynamic_dims={"batch": 2})


def _cosine(ref: Path, low: Path, samples: list[dict[str, np.ndarray]]) -> float:
    a = ort.InferenceSession(str(ref), providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(low), providers=["CPUExecutionProvider"])
    x = np.concatenate([a.run(None, s)[0] for s in samples]).ravel()
    y = np.concatenate([b.run(None, s)[0] for s in samples]).ravel()
    return float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))


@pytest.mark.parametrize("style", ["tensorrt", "cpu"])
def test_guard_localises_and_repairs_outlier_layer(outlier_model: Path, tmp_path: Path, style: str) -> None:
    calib, held_out = _data(outlier_model, 0), _data(outlier_model, 1)

    naive = quantize_int8(outlier_model, tmp_path / "naive.onnx", calib, style=style)  # type: ignore[arg-type]
    assert naive.path is not None
    assert _cosine(outlier_model, naive.path, held_out) < 0.95  # measured ~0.90: INT8 is broken

    table = per_layer_errors(outlier_model, naive.path, calib)
    worst = table[0]
    assert worst.module_path == "conv3"  # the exporter's module path survives into the report
    assert any(table_node.startswith("node_conv2d_2") for table_node in worst.nodes)
    assert worst.cosine < 0.9 and worst.contribution > 0.4  # 0.45 with bias correction, 0.5+ without
    assert all(entry.contribution < worst.contribution / 2 for entry in table[1:])

    result = guarded_quantize(
        outlier_model,
        tmp_path / "guarded.onnx",
        calib,
        lambda path: _cosine(outlier_model, path, held_out) >= 0.99,
        int8_options={"style": style},
        max_keep=3,
    )
    assert result.passed and result.path is not None
    assert "node_conv2d_2" in result.kept_nodes  # conv3 stays in FP32
    assert len(result.kept_nodes) <= 3 and result.iterations >= 2
    assert result.history[0] == ((), False)
    assert _cosine(outlier_model, result.path, held_out) >= 0.99


def test_guard_noop_when_gate_passes(outlier_model: Path, tmp_path: Path) -> None:
    calib = _data(outlier_model, 0)
    result = guarded_quantize(outlier_model, tmp_path / "g.onnx", calib, lambda path: True)
    assert result.passed and result.kept_nodes == [] and result.iterations == 1 and result.table == []


def test_guard_gives_up_at_limit(outlier_model: Path, tmp_path: Path) -> None:
    calib = _data(outlier_model, 0)
    result = guarded_quantize(outlier_model, tmp_path / "g.onnx", calib, lambda path: False, max_keep=1)
    # One pick at the limit: a node plus any node ORT folds into it (a Relu into its Conv) counts once.
    assert not result.passed and result.limit == 1 and result.iterations == 2
    assert 1 <= len(result.kept_nodes) <= 2
    assert result.path is not None and result.path.exists()


def test_guard_fp16(outlier_model: Path, tmp_path: Path) -> None:
    calib = _data(outlier_model, 0)
    result = guarded_quantize(
        outlier_model,
        tmp_path / "g16.onnx",
        calib,
        lambda path: _cosine(outlier_model, path, calib) >= 0.999,
        precision="fp16",
    )
    assert result.passed and result.path is not None


def test_chunked_float32_layer_stats_agree_with_float64() -> None:
    """The per-layer statistics sum float32 chunks in float64 (25x faster on ViT-B/16): same numbers to ~1e-7."""
    from optpipe.precision.guard.localize import STATS_CHUNK, _Stats

    rng = np.random.default_rng(0)
    ref = rng.standard_normal((3, STATS_CHUNK + 17)).astype(np.float32)  # crosses chunk boundaries
    low = (ref + rng.standard_normal(ref.shape) * 1e-3).astype(np.float16)  # an FP16 variant's tensor
    stats = _Stats()
    stats.add(ref, low)
    a, b = ref.astype(np.float64).ravel(), low.astype(np.float64).ravel()
    rel = np.linalg.norm(a - b) / np.linalg.norm(a)
    cosine = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    assert stats.rel() == pytest.approx(rel, rel=1e-6) and stats.cosine() == pytest.approx(cosine, abs=1e-7)
    broken = _Stats()
    broken.add(ref, np.where(ref > 2, np.inf, ref))
    assert broken.rel() == float("inf") and broken.cosine() == 0.0


def test_the_guard_keeps_the_same_nodes_whichever_way_the_layers_are_compared(
    outlier_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The per-layer sums computed in one merged graph steer the search exactly as the exposed tensors do."""
    from optpipe.precision.guard import localize

    calib, held_out = _data(outlier_model, 0), _data(outlier_model, 1)

    def guard(name: str) -> tuple[bool, list[str]]:
        result = guarded_quantize(outlier_model, tmp_path / name, calib,
                                  lambda path: _cosine(outlier_model, path, held_out) >= 0.99, max_keep=3)
        return result.passed, result.kept_nodes

    merged = guard("merged.onnx")
    monkeypatch.setattr(localize, "paired_sums", lambda *a: None)
    assert merged == guard("exposed.onnx") and merged[0] and "node_conv2d_2" in merged[1]
