"""Bias correction: quantized Conv/Gemm layers keep their FP32 output means (optpipe.precision.bias_correction)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from optpipe.precision.bias_correction import candidates, correct_biases
from optpipe.precision.static_quantize import quantize_int8

CHANNELS = 8


def _weights() -> np.ndarray:
    """Depthwise 3x3 weights that int8 rounding shifts one way: each channel's max is 1, the rest sit at
    (k + 0.45) / 127, so every weight but the max rounds down by 0.45 of a step."""
    rng = np.random.default_rng(0)
    steps = rng.integers(10, 100, size=(CHANNELS, 1, 3, 3)).astype(np.float64)
    weight = (steps + 0.45) / 127.0
    weight[:, 0, 0, 0] = 1.0
    return weight.astype(np.float32)


def _model(path: Path, *, shared_bias: bool = False) -> Path:
    """image [N, 8, 12, 12] -> depthwise Conv (no padding) -> out; a second Conv shares the bias when asked."""
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="dw", group=CHANNELS)]
    inits = [numpy_helper.from_array(_weights(), "w"), numpy_helper.from_array(np.zeros(CHANNELS, np.float32), "b")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if shared_bias:
        nodes.append(helper.make_node("Conv", ["x", "w", "b"], ["y2"], name="dw2", group=CHANNELS))
        outputs.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, None))
    image = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, CHANNELS, 12, 12])
    graph = helper.make_graph(nodes, "dw", [image], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _samples(count: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.uniform(0.0, 6.0, size=(1, CHANNELS, 12, 12)).astype(np.float32)} for _ in range(count)]


def _channel_means(path: Path, samples: list[dict[str, np.ndarray]]) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outs = [sess.run(["y"], s)[0] for s in samples]
    return np.concatenate(outs).mean(axis=(0, 2, 3))


def test_corrected_layer_keeps_the_fp32_output_mean(tmp_path: Path) -> None:
    src = _model(tmp_path / "m.onnx")
    calib, held_out = _samples(32, 0), _samples(32, 1)
    fp32 = _channel_means(src, held_out)
    plain = quantize_int8(src, tmp_path / "plain.onnx", calib, reduce_range=False, bias_correction=False)
    fixed = quantize_int8(src, tmp_path / "fixed.onnx", calib, reduce_range=False)
    assert plain.bias_correction is None
    assert fixed.bias_correction is not None and fixed.bias_correction["corrected_nodes"] == 1
    shift_plain = np.abs(_channel_means(tmp_path / "plain.onnx", held_out) - fp32)
    shift_fixed = np.abs(_channel_means(tmp_path / "fixed.onnx", held_out) - fp32)
    assert shift_plain.mean() > 0.05  # the rounding bias this model was built to have
    assert shift_fixed.mean() < 0.2 * shift_plain.mean()


def test_the_source_model_is_not_modified(tmp_path: Path) -> None:
    src = _model(tmp_path / "m.onnx")
    before = src.read_bytes()
    quantize_int8(src, tmp_path / "q.onnx", _samples(8, 0), reduce_range=False)
    assert src.read_bytes() == before


def test_ranges_without_samples_skip_the_correction_with_a_warning(tmp_path: Path) -> None:
    src = _model(tmp_path / "m.onnx")
    first = quantize_int8(src, tmp_path / "a.onnx", _samples(8, 0), reduce_range=False)
    again = quantize_int8(src, tmp_path / "b.onnx", ranges=first.ranges, reduce_range=False)
    assert again.bias_correction is None
    assert any("bias correction skipped" in w for w in again.warnings)


def test_excluded_nodes_and_shared_biases_are_left_alone(tmp_path: Path) -> None:
    model = onnx.load(str(_model(tmp_path / "m.onnx")))
    ranges = {"x": (0.0, 6.0)}
    assert [n.name for n in candidates(model, (), ranges)] == ["dw"]
    assert candidates(model, ("dw",), ranges) == []
    assert candidates(model, (), {}) == []  # an input without a range is not quantized
    shared = onnx.load(str(_model(tmp_path / "s.onnx", shared_bias=True)))
    assert candidates(shared, (), ranges) == []
    result = correct_biases(shared, _samples(4, 0), ranges)
    assert result.nodes == ()


def test_correction_matches_the_measured_shift_exactly_without_padding(tmp_path: Path) -> None:
    """The predicted shift is Wq E[q(x)] - W E[x]: it equals the measured mean difference when every window
    sees the image's mean (inputs constant over space; otherwise unpadded borders weigh pixels unevenly)."""
    torch = pytest.importorskip("torch")
    from optpipe.precision.bias_correction import _fake_quantize, _rounded_weight

    model = onnx.load(str(_model(tmp_path / "m.onnx")))
    rng = np.random.default_rng(3)
    constant = [rng.uniform(0, 6, size=(1, CHANNELS, 1, 1)) for _ in range(6)]
    samples = [{"x": np.broadcast_to(c, (1, CHANNELS, 12, 12)).astype(np.float32)} for c in constant]
    ranges = {"x": (0.0, 6.0)}
    result = correct_biases(model, samples, ranges)
    bias = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "b"))
    x = np.concatenate([s["x"] for s in samples]).astype(np.float64)
    w = _weights().astype(np.float64)
    xq = _fake_quantize(x, ranges["x"], TensorProto.UINT8)
    fp = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), groups=CHANNELS)
    q = torch.nn.functional.conv2d(torch.from_numpy(xq), torch.from_numpy(_rounded_weight(w, False)), groups=CHANNELS)
    measured = (q - fp).mean(dim=(0, 2, 3)).numpy()
    assert result.nodes == ("dw",)
    assert np.allclose(bias, -measured, atol=1e-5)
