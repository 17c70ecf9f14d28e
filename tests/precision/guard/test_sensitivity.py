"""Output sensitivity (optpipe.precision.guard.sensitivity) on a hand-built Q/DQ model, run by real onnxruntime."""

from __future__ import annotations

import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from optpipe.precision.guard.sensitivity import SWITCHES, output_sensitivity, switchable

RNG = np.random.default_rng(0)
W1 = RNG.normal(size=(8, 8)).astype(np.float32)
W2 = RNG.normal(size=(8, 4)).astype(np.float32)


def _fp32() -> onnx.ModelProto:
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
            helper.make_node("MatMul", ["h", "w2"], ["y"], name="mm2"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(W1, "w1"), numpy_helper.from_array(W2, "w2")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _lowp(scale1: float, scale2: float) -> onnx.ModelProto:
    """W1 and W2 stored as int8 with the given scales (DequantizeLinear), and h through a fine Q/DQ pair."""

    def q(w: np.ndarray, s: float) -> np.ndarray:
        return np.clip(np.round(w / s), -127, 127).astype(np.int8)

    arrays = {
        "w1_q": q(W1, scale1),
        "w2_q": q(W2, scale2),
        "s1": np.float32(scale1),
        "s2": np.float32(scale2),
        "sh": np.float32(0.005),
        "zh": np.uint8(128),
    }
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in arrays.items()]
    nodes = [
        helper.make_node("DequantizeLinear", ["w1_q", "s1"], ["w1_dq"], name="dq1"),
        helper.make_node("DequantizeLinear", ["w2_q", "s2"], ["w2_dq"], name="dq2"),
        helper.make_node("MatMul", ["x", "w1_dq"], ["h"], name="mm1"),
        helper.make_node("QuantizeLinear", ["h", "sh", "zh"], ["h_q"], name="qh"),
        helper.make_node("DequantizeLinear", ["h_q", "sh", "zh"], ["h_dq"], name="dqh"),
        helper.make_node("MatMul", ["h_dq", "w2_dq"], ["y"], name="mm2"),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _samples() -> list[dict[str, np.ndarray]]:
    return [{"x": RNG.normal(size=(1, 8)).astype(np.float32) * 0.05} for _ in range(4)]


def test_the_coarse_first_layer_is_the_one_that_matters() -> None:
    gains = output_sensitivity(_fp32(), _lowp(0.5, 0.01), _samples(), [["mm1"], ["mm2"]])
    assert gains[0] is not None and gains[1] is not None
    assert gains[0] > 0.02  # coarse W1 (step 0.5 on N(0,1) weights) dominates the output error
    assert gains[0] > 2 * abs(gains[1])  # mm2 gains only what bypassing h's Q/DQ gives


def test_keeping_every_quantized_node_restores_fp32() -> None:
    samples = _samples()
    gains = output_sensitivity(_fp32(), _lowp(0.5, 0.5), samples, [["mm1", "mm2"], ["not_a_node"]])
    assert gains[1] is None  # nothing quantized to restore
    # gain == the whole error: the edited model reproduces FP32 (h's Q/DQ bypassed, both weights restored)
    ref = [_fp32_output(s["x"]) for s in samples]
    low = [_lowp_output(s["x"]) for s in samples]
    whole = np.sqrt(sum(float(((a - b) ** 2).sum()) for a, b in zip(ref, low, strict=True)))
    whole /= np.sqrt(sum(float((a**2).sum()) for a in ref))
    assert whole > 0.05
    assert np.isclose(gains[0], whole, rtol=1e-4)


def _fp32_output(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.float64) @ W1) @ W2


def _lowp_output(x: np.ndarray) -> np.ndarray:
    w1 = np.clip(np.round(W1 / 0.5), -127, 127) * 0.5
    w2 = np.clip(np.round(W2 / 0.5), -127, 127) * 0.5
    h = x.astype(np.float64) @ w1
    h = (np.clip(np.round(h / 0.005) + 128, 0, 255) - 128) * 0.005
    return h @ w2


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, feed)[0])


def test_one_switchable_session_computes_the_quantized_model_and_each_group_in_fp32() -> None:
    """All switches on is the Q/DQ model bit for bit; one off is that group in FP32 (here: mm1 reads W1)."""
    lowp = _lowp(0.5, 0.5)
    model, switch_of = switchable(lowp, _fp32(), [["mm1"], ["not_a_node"], ["mm1", "mm2"]])
    assert switch_of == [0, None, 1]
    x = _samples()[0]["x"]
    on = np.ones(2, bool)
    assert np.array_equal(_run(model, {"x": x, SWITCHES: on}), _run(lowp, {"x": x}))
    h = x.astype(np.float64) @ W1  # mm1 in FP32; h still goes through mm2's Q/DQ, W2 stays quantized
    h = (np.clip(np.round(h / 0.005) + 128, 0, 255) - 128) * 0.005
    expected = h @ (np.clip(np.round(W2 / 0.5), -127, 127) * 0.5)
    np.testing.assert_allclose(_run(model, {"x": x, SWITCHES: np.array([False, True])}), expected, rtol=1e-4,
                               atol=1e-6)
    # mm1 sits in two groups: switching either one off restores it; the second also restores mm2
    np.testing.assert_allclose(_run(model, {"x": x, SWITCHES: np.array([True, False])}), _fp32_output(x), rtol=1e-4,
                               atol=1e-6)


def test_groups_not_measured_before_the_deadline_have_no_gain() -> None:
    """The guard's time budget is checked inside the round: past it the remaining candidates are not measured."""
    gains = output_sensitivity(_fp32(), _lowp(0.5, 0.01), _samples(), [["mm1"], ["mm2"]], deadline=time.monotonic())
    assert gains == [None, None]
    gains = output_sensitivity(_fp32(), _lowp(0.5, 0.01), _samples(), [["mm1"], ["mm2"]],
                               deadline=time.monotonic() + 600)
    assert all(g is not None for g in gains)
