"""Weight-only INT4 (optpipe.precision.weight_only_quantize): MatMulNBits written, exclusions kept, options honoured."""

from __future__ import annotations

import collections
import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from optpipe.core.errors import UserInputError
from optpipe.precision.weight_only_quantize import (
    Int4Options,
    gemms_to_matmuls,
    quantizable_nodes,
    quantize_int4_weight,
)

K, N, OUT = 64, 48, 10


def _model(path: Path) -> Path:
    """x (B, K) -> MatMul(W1) -> Relu -> Gemm(W2 transposed, bias, beta 0.5), then an activation x activation MatMul."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((K, N)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((OUT, N)).astype(np.float32), "w2")  # (N_out, K) for transB
    bias = numpy_helper.from_array(rng.standard_normal(OUT).astype(np.float32), "b2")
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["g"], name="fc2", transB=1, beta=0.5),
        helper.make_node("Transpose", ["g"], ["gt"], name="t"),
        helper.make_node("MatMul", ["g", "gt"], ["y"], name="gram"),  # no constant weight: never quantized
    ]
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "b"])], [w1, w2, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    return np.asarray(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0])


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b)))


def _ops(path: Path) -> collections.Counter[str]:
    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def test_constant_weight_matmuls_and_gemms_become_matmulnbits(tmp_path: Path) -> None:
    src = _model(tmp_path / "m.onnx")
    assert quantizable_nodes(onnx.load(str(src))) == ["fc1", "fc2"]  # not the activation x activation "gram"
    result = quantize_int4_weight(src, tmp_path / "q.onnx")
    assert result.status == "quantized" and sorted(result.quantized_nodes) == ["fc1", "fc2"]
    ops = _ops(tmp_path / "q.onnx")
    assert ops["MatMulNBits"] == 2 and ops["Gemm"] == 0 and ops["MatMul"] == 1, ops  # gram stays MatMul
    x = np.random.default_rng(1).standard_normal((4, K)).astype(np.float32)
    assert _cosine(_run(src, x), _run(tmp_path / "q.onnx", x)) > 0.99


def test_excluded_nodes_stay_as_they_were(tmp_path: Path) -> None:
    src = _model(tmp_path / "m.onnx")
    result = quantize_int4_weight(src, tmp_path / "q.onnx", exclude_nodes=["fc2", "no-such-node"])
    assert result.quantized_nodes == ["fc1"] and result.excluded_nodes == ["fc2"]
    assert any("no-such-node" in w for w in result.warnings)
    nodes = {n.name: n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node}
    assert nodes["fc2"] == "Gemm" and nodes["fc1_Q4"] == "MatMulNBits", nodes
    everything = quantize_int4_weight(src, tmp_path / "none.onnx", exclude_nodes=["fc1", "fc2"])
    assert everything.status == "nothing_quantizable" and everything.path is None
    assert not (tmp_path / "none.onnx").exists()


@pytest.mark.parametrize("block", [16, 64])
def test_block_size_symmetric_and_accuracy_level_are_honoured(tmp_path: Path, block: int) -> None:
    src = _model(tmp_path / "m.onnx")
    quantize_int4_weight(src, tmp_path / "q.onnx", options=Int4Options(block_size=block, symmetric=True,
                                                                        accuracy_level=1))
    model = onnx.load(str(tmp_path / "q.onnx"))
    node = next(n for n in model.graph.node if n.name == "fc1_Q4")
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["block_size"] == block and attrs["accuracy_level"] == 1 and attrs["K"] == K
    assert len(node.input) == 3  # symmetric: no zero points
    scales = next(i for i in model.graph.initializer if i.name == node.input[2])
    assert list(scales.dims) == [N, -(-K // block)]  # one scale per block of K, per output column


def test_gemm_rewrite_computes_the_same(tmp_path: Path) -> None:
    src = _model(tmp_path / "m.onnx")
    model = onnx.load(str(src))
    assert gemms_to_matmuls(model) == 1
    names = {n.name: n for n in model.graph.node}
    assert names["fc2"].op_type == "MatMul" and names["fc2_bias"].output[0] == "g"  # same name, same output
    onnx.save(model, str(tmp_path / "r.onnx"))
    x = np.random.default_rng(2).standard_normal((3, K)).astype(np.float32)
    np.testing.assert_allclose(_run(tmp_path / "r.onnx", x), _run(src, x), rtol=1e-4, atol=1e-3)


def test_embedding_tables_only_with_the_option(tmp_path: Path) -> None:
    """A Gather of a float table becomes GatherBlockQuantized; a Gather of an int64 constant (a shape lookup) never."""
    rng = np.random.default_rng(0)
    table = numpy_helper.from_array(rng.standard_normal((100, 64)).astype(np.float32), "table")
    dims = numpy_helper.from_array(np.array([7, 9], np.int64), "dims")
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
             helper.make_node("Gather", ["dims", "pick"], ["d"], name="lookup"),
             helper.make_node("MatMul", ["e", "w"], ["y"], name="proj")]
    w = numpy_helper.from_array(rng.standard_normal((64, 8)).astype(np.float32), "w")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"]),
                                           helper.make_tensor_value_info("pick", TensorProto.INT64, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8]),
                               helper.make_tensor_value_info("d", TensorProto.INT64, [])], [table, dims, w])
    src = tmp_path / "e.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), str(src))
    assert quantizable_nodes(onnx.load(str(src))) == ["proj"]
    assert quantize_int4_weight(src, tmp_path / "q.onnx").quantized_nodes == ["proj"]
    result = quantize_int4_weight(src, tmp_path / "qe.onnx", options=Int4Options(embeddings=True))
    assert sorted(result.quantized_nodes) == ["embed", "proj"]
    assert any("opset raised from 20 to 21" in w for w in result.warnings), result.warnings
    ops = _ops(tmp_path / "qe.onnx")
    assert ops["GatherBlockQuantized"] == 1 and ops["Gather"] == 1 and ops["MatMulNBits"] == 1, ops
    ids = np.array([3, 50, 99], np.int64)
    run = ort.InferenceSession(str(tmp_path / "qe.onnx"), providers=["CPUExecutionProvider"])
    low, dim = run.run(None, {"ids": ids, "pick": np.array(1, np.int64)})
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"ids": ids,
                                                                                      "pick": np.array(1, np.int64)})
    assert int(dim) == 9 and _cosine(ref[0], low) > 0.98


def test_the_quantizer_leaves_the_process_logging_alone(tmp_path: Path) -> None:
    """ORT's module calls logging.basicConfig(level=INFO) on import; a build must not start printing INFO."""
    import sys

    sys.modules.pop("onnxruntime.quantization.matmul_nbits_quantizer", None)
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    for handler in saved[1]:  # as in a plain `optpipe build`: basicConfig only acts on a root without handlers
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)
    try:
        quantize_int4_weight(_model(tmp_path / "m.onnx"), tmp_path / "q.onnx")
        assert (root.level, root.handlers) == (logging.WARNING, [])
    finally:
        root.setLevel(saved[0])
        for handler in saved[1]:
            root.addHandler(handler)


def test_eight_bit_nodes_get_8_bit_blocks_and_err_less_than_4_bit(tmp_path: Path) -> None:
    """``eight_bit_nodes`` (the guard's kept_as="int8") become MatMulNBits bits=8; the others stay 4-bit."""
    src = _model(tmp_path / "m.onnx")
    result = quantize_int4_weight(src, tmp_path / "q8.onnx", eight_bit_nodes=["fc1"])
    assert sorted(result.quantized_nodes) == ["fc1", "fc2"] and result.excluded_nodes == []
    bits = {n.name: {a.name: helper.get_attribute_value(a) for a in n.attribute}.get("bits")
            for n in onnx.load(str(tmp_path / "q8.onnx")).graph.node if n.op_type == "MatMulNBits"}
    assert bits == {"fc1_Q8": 8, "fc2_Q4": 4}, bits
    quantize_int4_weight(src, tmp_path / "q4.onnx")
    x = np.random.default_rng(3).standard_normal((16, K)).astype(np.float32)
    ref = _run(src, x)
    assert 1 - _cosine(ref, _run(tmp_path / "q8.onnx", x)) < 1 - _cosine(ref, _run(tmp_path / "q4.onnx", x))


def _table_model(path: Path) -> Path:
    rng = np.random.default_rng(0)
    table = numpy_helper.from_array(rng.standard_normal((100, 64)).astype(np.float32) * 0.02, "table")
    w = numpy_helper.from_array(rng.standard_normal((64, 8)).astype(np.float32), "w")
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
             helper.make_node("MatMul", ["e", "w"], ["y"], name="proj")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])], [table, w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_int8_embedding_tables_keep_the_opset_and_a_quarter_of_the_bytes(tmp_path: Path) -> None:
    src = _table_model(tmp_path / "e.onnx")
    assert quantizable_nodes(onnx.load(str(src)), embeddings=True) == ["embed", "proj"]
    result = quantize_int4_weight(src, tmp_path / "q.onnx", options=Int4Options(embeddings_int8=True))
    assert sorted(result.quantized_nodes) == ["embed", "proj"] and not result.warnings, result
    model = onnx.load(str(tmp_path / "q.onnx"))
    assert model.opset_import[0].version == 17
    inits = {i.name: i for i in model.graph.initializer}
    assert "table" not in inits and inits["table_uint8"].data_type == TensorProto.UINT8  # the FP32 table is gone
    ops = _ops(tmp_path / "q.onnx")
    assert ops["Gather"] == 1 and ops["DequantizeLinear"] == 1 and ops["MatMulNBits"] == 1, ops
    ids = np.array([3, 50, 99], np.int64)
    low = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})
    assert _cosine(ref[0], low[0]) > 0.99
    kept = quantize_int4_weight(src, tmp_path / "k.onnx", options=Int4Options(embeddings_int8=True),
                                eight_bit_nodes=["embed"])  # a table has no 8-bit MatMul form: it stays FP32
    assert kept.quantized_nodes == ["proj"] and kept.excluded_nodes == ["embed"]


def test_embedding_options_exclude_each_other() -> None:
    with pytest.raises(UserInputError, match="exclude each other"):
        Int4Options(embeddings=True, embeddings_int8=True).check()
    with pytest.raises(UserInputError, match="kept_as"):
        Int4Options(kept_as="fp16").check()
