"""Output sensitivity for dynamic INT8: the emulation matches ORT's integer model, and the guard keeps first
the node that hurts the *output* most, not the one with the largest local error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from optpipe.precision.dynamic_quantize import quantizable_nodes, quantize_int8_dynamic
from optpipe.precision.guard.dynamic_sensitivity import SWITCHES, dynamic_output_gains, emulated
from optpipe.precision.guard.localize import guarded_quantize

WIDTH = 16


def _weights() -> tuple[np.ndarray, np.ndarray]:
    """``early`` quantizes badly (one outlier row per column squeezes the rest onto a few int8 steps) and feeds
    everything; ``late``'s local error is larger still but it adds a tiny correction to the output."""
    rng = np.random.default_rng(0)
    early = rng.normal(size=(WIDTH, WIDTH)).astype(np.float32) * 0.3
    early[0] = 10.0  # x[:, 0] is near zero on every row, so this row adds almost nothing in FP32
    early[:, 0] *= 1e-3  # h[:, 0] is near zero too
    late = rng.normal(size=(WIDTH, WIDTH)).astype(np.float32) * 1e-3
    late[0] = 2.0  # its int8 step rounds every other row to zero: g loses nearly all of its value
    return early, late


def _model() -> onnx.ModelProto:
    """h = x @ early; y = h + (h @ late) @ mix: the late branch is small next to the residual h."""
    early, late = _weights()
    mix = np.eye(WIDTH, dtype=np.float32) * 1e-2
    inits = [numpy_helper.from_array(w, n) for n, w in (("early", early), ("late", late), ("mix", mix))]
    nodes = [
        helper.make_node("MatMul", ["x", "early"], ["h"], name="mm_early"),
        helper.make_node("MatMul", ["h", "late"], ["g"], name="mm_late"),
        helper.make_node("MatMul", ["g", "mix"], ["c"], name="mm_mix"),
        helper.make_node("Add", ["h", "c"], ["y"], name="residual"),
    ]
    value = helper.make_tensor_value_info
    x, y = value("x", TensorProto.FLOAT, [None, WIDTH]), value("y", TensorProto.FLOAT, [None, WIDTH])
    graph = helper.make_graph(nodes, "branches", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def _rows(count: int = 6) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    rows = []
    for _ in range(count):
        x = rng.normal(size=(1, WIDTH)).astype(np.float32)
        x[0, 0] = 1e-3
        rows.append({"x": x})
    return rows


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_the_emulation_computes_what_the_integer_model_computes(tmp_path: Path) -> None:
    src, dst = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    onnx.save(_model(), str(src))
    assert quantize_int8_dynamic(src, dst, reduce_range=True).path == dst
    model, names = emulated(_model(), onnx.load(str(dst)), quantizable_nodes(_model()))
    assert sorted(names) == ["mm_early", "mm_late", "mm_mix"]
    emulation = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    integer = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    fp32 = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    for row in _rows(3):
        quantized = integer.run(None, row)[0]
        np.testing.assert_allclose(emulation.run(None, {**row, SWITCHES: np.ones(3, bool)})[0], quantized,
                                   rtol=1e-4, atol=1e-4 * np.abs(quantized).max())  # fmt: skip
        exact = fp32.run(None, row)[0]
        np.testing.assert_allclose(emulation.run(None, {**row, SWITCHES: np.zeros(3, bool)})[0], exact,
                                   rtol=1e-6, atol=1e-6 * np.abs(exact).max())  # fmt: skip


def test_the_node_that_hurts_the_output_ranks_first(tmp_path: Path) -> None:
    src, dst = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    onnx.save(_model(), str(src))
    quantize_int8_dynamic(src, dst, reduce_range=True)
    gains = dynamic_output_gains(_model(), dst, _rows(), quantizable_nodes(_model()))
    assert max(gains, key=lambda name: gains[name]) == "mm_early"
    assert gains["mm_early"] > 10 * abs(gains["mm_late"])


def test_the_dynamic_guard_keeps_the_output_sensitive_node_first(tmp_path: Path) -> None:
    """Ranked by local error the guard kept ``mm_late`` first (its own output's error is the largest)."""
    src, dst = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    onnx.save(_model(), str(src))
    reference = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    rows = _rows()

    def gate(path: Path) -> bool:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return min(_cosine(session.run(None, r)[0], reference.run(None, r)[0]) for r in rows) >= 0.9999

    def quantize(keep: list[str]) -> object:
        return quantize_int8_dynamic(src, dst, exclude_nodes=keep, reduce_range=True)

    result = guarded_quantize(src, dst, rows, gate, quantize=quantize, eligible=quantizable_nodes, max_keep=2,
                              output_gains=dynamic_output_gains)  # fmt: skip
    assert result.passed and result.kept_nodes == ["mm_early"], result.history
