"""Tests for optpipe.precision.guard.paired_stats: both models in one graph, four sums per tensor pair out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optpipe.precision import onnx_graph
from optpipe.precision.guard import localize
from optpipe.precision.guard.paired_stats import LOW_PREFIX, paired_sums

WEIGHTS = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)


def _model(path: Path, weights: np.ndarray, *, opset: int = 18, half_relu: bool = False,
           infinite: bool = False) -> Path:
    """``y = 2 * sum(relu(x @ W))`` with a scalar ``s`` on the way; ``half_relu``: the Relu in float16 (an FP16
    variant's tensor type); ``infinite``: ``h`` divided by zero before the Relu (infinities where it is positive)."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="matmul")]
    relu_in = "h"
    if infinite:
        nodes.append(helper.make_node("Div", ["h", "zero"], ["h_inf"], name="divide"))
        relu_in = "h_inf"
    if half_relu:
        nodes += [helper.make_node("Cast", [relu_in], ["h16"], to=TensorProto.FLOAT16, name="to16"),
                  helper.make_node("Relu", ["h16"], ["r"], name="relu"),
                  helper.make_node("Cast", ["r"], ["r32"], to=TensorProto.FLOAT, name="to32")]
        reduce_in = "r32"
    else:
        nodes.append(helper.make_node("Relu", [relu_in], ["r"], name="relu"))
        reduce_in = "r"
    nodes += [helper.make_node("ReduceSum", [reduce_in], ["s"], keepdims=0, name="sum"),
              helper.make_node("Mul", ["s", "two"], ["y"], name="double")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
        [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(np.array(2.0, np.float32), "two"),
         numpy_helper.from_array(np.array(0.0, np.float32), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(path))
    return path


def _rows(count: int = 3) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [{"x": rng.standard_normal((1, 3)).astype(np.float32)} for _ in range(count)]


def _pairs(fp32: Path, low: Path) -> tuple[dict[str, str], tuple[dict[str, int], dict[str, int]]]:
    a, b = onnx_graph.load_skeleton(fp32), onnx_graph.load_skeleton(low)
    types = (onnx_graph.float_tensor_types(a), onnx_graph.float_tensor_types(b))
    pairs = {k: v for k, v in localize.tensor_map(a, b).items() if k in types[0] and v in types[1]}
    return pairs, types


def _float64_sums(fp32: Path, low: Path, pairs: dict[str, str], row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The sums (paired_stats.SUMS) from the tensors themselves, exposed as outputs and summed in float64."""
    ref = next(onnx_graph.ExposedSession(onnx_graph.load_model(fp32), list(pairs)).run([row]))
    got = next(onnx_graph.ExposedSession(onnx_graph.load_model(low), list(pairs.values())).run([row]))
    sums = {}
    for name, low_name in pairs.items():
        a, b = ref[name].astype(np.float64).ravel(), got[low_name].astype(np.float64).ravel()
        finite = 0.0 if np.isfinite(b).all() else np.nan
        sums[name] = np.array([((a - b) ** 2).sum(), (a * a).sum(), (b * b).sum(), (a * b).sum(), finite])
    return sums


@pytest.mark.parametrize("opset", [11, 13, 18])  # axes as attributes before opset 13, as inputs from 13
@pytest.mark.parametrize("half_relu", [False, True])
def test_the_sums_equal_float64_sums_of_the_tensors(tmp_path: Path, opset: int, half_relu: bool) -> None:
    fp32 = _model(tmp_path / "fp32.onnx", WEIGHTS, opset=opset)
    low = _model(tmp_path / "low.onnx", WEIGHTS + 0.01, opset=opset, half_relu=half_relu)
    pairs, types = _pairs(fp32, low)
    assert set(pairs) == {"h", "r", "s", "y"}  # a scalar ("s", "y") is a pair too
    rows = _rows()
    sums = paired_sums(fp32, low, pairs, types, rows)
    assert sums is not None and len(sums) == len(rows)
    for row, got in zip(rows, sums, strict=True):
        expected = _float64_sums(fp32, low, pairs, row)
        assert set(got) == set(pairs)
        for name in pairs:
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-6)


def test_the_ranking_is_the_ranking_of_the_exposed_tensors(tmp_path: Path) -> None:
    """The merged graph and the fallback that exposes every tensor rank the same nodes with the same numbers."""
    fp32 = _model(tmp_path / "fp32.onnx", WEIGHTS)
    low = _model(tmp_path / "low.onnx", WEIGHTS * np.array([1.0, 1.0, 1.3, 1.0], np.float32))
    merged = localize.per_layer_errors(fp32, low, _rows())
    pairs, _ = _pairs(fp32, low)
    stats = {name: localize._Stats() for name in pairs}
    localize._exposed_stats(fp32, low, pairs, _rows(), stats)
    assert merged[0].node == "matmul" and merged[0].contribution > 0.01
    for entry in merged:
        assert entry.rel_error == pytest.approx(stats[entry.tensor].rel(), rel=1e-6)
        assert entry.cosine == pytest.approx(stats[entry.tensor].cosine(), abs=1e-6)


def test_models_at_two_opset_versions_are_compared_tensor_by_tensor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                    ) -> None:
    """One graph cannot hold operators of two opsets: the analysis falls back to exposing every tensor."""
    fp32 = _model(tmp_path / "fp32.onnx", WEIGHTS, opset=18)
    low = _model(tmp_path / "low.onnx", WEIGHTS + 0.05, opset=17)
    pairs, types = _pairs(fp32, low)
    assert paired_sums(fp32, low, pairs, types, _rows()) is None
    exposed = []
    real = localize._exposed_stats
    monkeypatch.setattr(localize, "_exposed_stats", lambda *a: exposed.append(1) or real(*a))
    table = localize.per_layer_errors(fp32, low, _rows())
    assert exposed == [1] and table[0].node == "matmul" and table[0].rel_error > 0.001


def test_a_fp32_name_that_clashes_with_the_prefix_is_not_merged(tmp_path: Path) -> None:
    model = onnx.load(str(_model(tmp_path / "fp32.onnx", WEIGHTS)))
    for node in model.graph.node:  # rename the tensor "h" to one the merged graph would give the low model's "h"
        node.output[:] = [LOW_PREFIX + o if o == "h" else o for o in node.output]
        node.input[:] = [LOW_PREFIX + i if i == "h" else i for i in node.input]
    onnx.save_model(model, str(tmp_path / "clash.onnx"))
    low = _model(tmp_path / "low.onnx", WEIGHTS + 0.05)
    pairs, types = _pairs(tmp_path / "clash.onnx", low)
    assert paired_sums(tmp_path / "clash.onnx", low, pairs, types, _rows()) is None


def test_a_non_finite_low_precision_tensor_ranks_first(tmp_path: Path) -> None:
    """An infinity in the low-precision model is an infinite error at the node that made it, not a sum that
    sorts anywhere; its twin without it has finite errors only."""
    fp32 = _model(tmp_path / "fp32.onnx", WEIGHTS)
    broken = localize.per_layer_errors(fp32, _model(tmp_path / "inf.onnx", WEIGHTS, infinite=True), _rows())
    assert broken[0].tensor == "r" and broken[0].rel_error == float("inf") and broken[0].cosine == 0.0
    healthy = localize.per_layer_errors(fp32, _model(tmp_path / "ok.onnx", WEIGHTS + 0.01), _rows())
    assert all(np.isfinite(e.rel_error) and 0.99 < e.cosine <= 1.0 + 1e-9 for e in healthy)


def test_a_merged_graph_onnx_runtime_refuses_is_compared_tensor_by_tensor(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A merged graph that ONNX Runtime cannot run costs the analysis its memory saving, never the build."""
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

    from optpipe.precision.guard import paired_stats

    fp32 = _model(tmp_path / "fp32.onnx", WEIGHTS)
    low = _model(tmp_path / "low.onnx", WEIGHTS + 0.05)
    expected = localize.per_layer_errors(fp32, low, _rows())

    def refuse(path: str) -> None:
        raise ort_errors.InvalidGraph(f"[ONNXRuntimeError] : 10 : INVALID_GRAPH : Load model from {path} failed")

    monkeypatch.setattr(paired_stats.onnx_graph, "session", refuse)
    pairs, types = _pairs(fp32, low)
    assert paired_sums(fp32, low, pairs, types, _rows()) is None
    monkeypatch.undo()
    monkeypatch.setattr(localize, "paired_sums", lambda *a: None)  # what per_layer_errors sees then: the fallback
    fallback = localize.per_layer_errors(fp32, low, _rows())
    assert [e.node for e in fallback] == [e.node for e in expected]
    assert [e.rel_error for e in fallback] == pytest.approx([e.rel_error for e in expected], rel=1e-6)


def test_a_huge_finite_tensor_is_not_taken_for_a_broken_one(tmp_path: Path) -> None:
    """An attention mask's float32 minimum (-3.4e38) is finite, though its square overflows float32: the same
    tensor in both models has no error. (BERT-base's mask Where ranked first, as infinite, before the check.)"""
    nodes = [helper.make_node("Mul", ["x", "huge"], ["mask"], name="mask"),
             helper.make_node("Add", ["mask", "x"], ["y"], name="add")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(np.array(np.finfo(np.float32).max / 4, np.float32), "huge")])
    path = tmp_path / "mask.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    table = localize.per_layer_errors(path, path, _rows())
    assert {e.node: e.rel_error for e in table} == {"mask": 0.0, "add": 0.0}
