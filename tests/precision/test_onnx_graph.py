"""onnx_graph over protobuf's 2 GiB: sessions and shape inference go through a file with external data."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optpipe.precision import onnx_graph


def _two_matmuls() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), f"W{i}") for i in (1, 2)]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W1"], ["h"], name="mm1"),
         helper.make_node("Relu", ["h"], ["r"], name="relu"),
         helper.make_node("MatMul", ["r", "W2"], ["y"], name="mm2")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def test_a_model_too_large_for_one_message_runs_and_is_typed_through_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the limit lowered to 0 every model takes the over-2-GiB path; the answers must not change.

    Why: ``SerializeToString`` and ``infer_shapes`` on a ModelProto over 2 GiB raise, which made the
    guard's per-layer analysis fail on every large model.
    """
    model = _two_matmuls()
    sample = {"x": np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32)}
    in_memory = next(onnx_graph.run_exposed(model, ["h", "r", "y"], [sample]))
    types = onnx_graph.float_tensor_types(model)
    monkeypatch.setattr(onnx_graph, "EXTERNAL_DATA_ABOVE", 0)
    assert onnx_graph.too_large_for_protobuf(model)
    assert onnx_graph.float_tensor_types(model) == types and types["h"] == TensorProto.FLOAT
    on_disk = next(onnx_graph.run_exposed(model, ["h", "r", "y"], [sample]))
    assert set(on_disk) == {"h", "r", "y"}
    for name, value in in_memory.items():
        np.testing.assert_array_equal(on_disk[name], value)
    assert len(model.graph.initializer[0].raw_data) == 16 * 16 * 4  # the caller's model still holds its weights
