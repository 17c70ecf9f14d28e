"""The dynamic INT8 weight recipe: 8-bit uint8 weights where ORT's U8S8 kernel saturates (x86 without VNNI)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import optpipe.precision.dynamic_quantize as dynamic_quantize
from optpipe.precision.dynamic_quantize import quantizable_nodes, quantize_int8_dynamic, weight_recipe
from optpipe.precision.guard.dynamic_sensitivity import SWITCHES, emulated
from optpipe.precision.static_quantize import REDUCE_RANGE_ENV


def _unpinned(monkeypatch: pytest.MonkeyPatch, vnni: bool) -> None:
    """This CPU's choice as on a machine with or without VNNI (the suite pins reduce_range otherwise)."""
    monkeypatch.delenv(REDUCE_RANGE_ENV, raising=False)
    monkeypatch.setattr(dynamic_quantize, "cpu_needs_reduce_range", lambda: not vnni)


def test_without_vnni_the_weights_are_8_bit_uint8_not_7_bit_int8(monkeypatch: pytest.MonkeyPatch) -> None:
    _unpinned(monkeypatch, vnni=False)
    assert weight_recipe(None) == (False, "uint8")


def test_twin_with_vnni_or_a_pinned_choice_the_weights_stay_int8(monkeypatch: pytest.MonkeyPatch) -> None:
    _unpinned(monkeypatch, vnni=True)
    assert weight_recipe(None) == (False, "int8")
    assert weight_recipe(True) == (True, "int8")  # what a test or a user pins is kept
    _unpinned(monkeypatch, vnni=False)
    monkeypatch.setenv(REDUCE_RANGE_ENV, "1")  # a fleet's pinned choice: 7-bit int8 on every machine
    assert weight_recipe(None)[1] == "int8"


def _model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(16, 8)).astype(np.float32)
    weight[:, 0] += 3.0  # a column far from zero: asymmetric uint8 zero points differ per column
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8])],
                              [numpy_helper.from_array(weight, "w")])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def test_uint8_weights_are_written_and_the_guards_emulation_matches_them(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    _unpinned(monkeypatch, vnni=False)
    src, dst = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    onnx.save(_model(), str(src))
    assert quantize_int8_dynamic(src, dst).path == dst
    lowp = onnx.load(str(dst))
    weight = next(i for i in lowp.graph.initializer if i.name == "w_quantized")
    assert weight.data_type == TensorProto.UINT8
    model, names = emulated(_model(), lowp, quantizable_nodes(_model()))
    assert names == ["mm"]
    x = np.random.default_rng(1).normal(size=(3, 16)).astype(np.float32)
    integer = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    emulation = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = emulation.run(None, {"x": x, SWITCHES: np.ones(1, bool)})[0]
    np.testing.assert_allclose(got, integer, rtol=1e-4, atol=1e-4 * np.abs(integer).max())
