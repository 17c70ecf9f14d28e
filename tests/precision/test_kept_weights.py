"""The forms a MatMul the dynamic INT8 guard keeps may take besides FP32 (``int8-dynamic``'s ``kept_as``)."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from optpipe.precision.kept_weights import DEQUANTIZED_SUFFIX, keep_as_dequantized, keep_as_eight_bit, kept_forms


def _two_matmuls(path: Path, shared: bool = False) -> Path:
    """x -> MatMul "a" (W1) -> Relu -> MatMul "b" (W2, or W1 again when ``shared``), 64 channels."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((64, 64)).astype(np.float32) * 0.1
    w2 = rng.standard_normal((64, 64)).astype(np.float32) * 0.1
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="a"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "W1" if shared else "W2"], ["y"], name="b")]  # fmt: skip
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 64])],
                              [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2")])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    return np.asarray(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0])


def _inputs() -> np.ndarray:
    x = np.random.default_rng(1).standard_normal((8, 64)).astype(np.float32)
    x[0] *= 1e4  # one row 10^4x the others: per-tensor activation quantization would round the rest to nothing
    return x


def test_dequantized_keeps_uint8_weights_and_a_float_activation(tmp_path: Path) -> None:
    src = _two_matmuls(tmp_path / "m.onnx")
    x = _inputs()
    ref = _run(src, x)
    assert keep_as_dequantized(src, ["b", "relu", "absent"]) == ["b"]  # only a MatMul with a constant weight
    model = onnx.load(str(src))
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert ops == {"MatMul": 2, "Relu": 1, "DequantizeLinear": 1}, ops
    inits = {i.name: i for i in model.graph.initializer}
    assert "W2" not in inits and inits[f"W2{DEQUANTIZED_SUFFIX}"].data_type == TensorProto.UINT8  # 1 byte a weight
    got = _run(src, x)
    rows = np.linalg.norm(got - ref, axis=1) / np.linalg.norm(ref, axis=1)
    assert rows.max() < 0.02, rows  # every row, the small ones too: only the weight was rounded
    assert kept_forms(src) == {"b": "dequantize"}


def test_dequantized_leaves_a_shared_weight_in_fp32_for_its_other_reader(tmp_path: Path) -> None:
    src = _two_matmuls(tmp_path / "m.onnx", shared=True)
    assert keep_as_dequantized(src, ["b"]) == ["b"]
    model = onnx.load(str(src))
    assert "W1" in {i.name for i in model.graph.initializer}  # "a" still reads it
    assert next(n for n in model.graph.node if n.name == "a").input[1] == "W1"
    assert kept_forms(src) == {"b": "dequantize"}


def test_eight_bit_blocks_for_the_kept_matmul_only(tmp_path: Path) -> None:
    src = _two_matmuls(tmp_path / "m.onnx")
    x = _inputs()[1:]
    ref = _run(src, x)
    assert keep_as_eight_bit(src, ["a", "relu"]) == ["a"]
    model = onnx.load(str(src))
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == 1 and {a.name: a.i for a in nbits[0].attribute}["bits"] == 8
    assert [n.name for n in model.graph.node if n.op_type == "MatMul"] == ["b"]
    got = _run(src, x)
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 0.02
    assert kept_forms(src) == {"a": "int8"}


def test_nothing_to_rewrite_leaves_the_file_alone(tmp_path: Path) -> None:
    src = _two_matmuls(tmp_path / "m.onnx")
    before = src.read_bytes()
    assert keep_as_dequantized(src, ["relu"]) == [] and keep_as_eight_bit(src, []) == []
    assert src.read_bytes() == before and kept_forms(src) == {}
