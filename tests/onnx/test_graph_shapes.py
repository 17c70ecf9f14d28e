"""optpipe.onnx.shapes: the one reader of a graph's inputs and outputs (what inspect, precision and lint use)."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from optpipe.onnx.shapes import GraphValue, graph_inputs, graph_outputs


def test_inputs_exclude_initializers_and_keep_each_dim_as_declared() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, None])
    w = helper.make_tensor_value_info("w", TensorProto.FLOAT, [3])
    unshaped = helper.make_tensor_value_info("m", TensorProto.INT64, None)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x, w, unshaped], [y],
                              initializer=[numpy_helper.from_array(np.zeros(3, np.float32), "w")])
    assert graph_inputs(graph) == [GraphValue("x", ("batch", 3, None), "float32"), GraphValue("m", None, "int64")]
    assert graph_outputs(graph) == [GraphValue("y", (2,), "float16")]
