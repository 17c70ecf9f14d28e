"""onnx_graph.single_rows: the guard's analysis runs row by row (bounded memory) where the batch axis is dynamic."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from optpipe.precision import onnx_graph


def _relu(batch: int | str) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="r")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_batched_samples_become_single_rows_up_to_the_limit() -> None:
    big = {"x": np.arange(40 * 4, dtype=np.float32).reshape(40, 4)}
    rows = onnx_graph.single_rows(_relu("batch"), [big, big], 8)
    assert len(rows) == 8 and all(r["x"].shape == (1, 4) for r in rows)
    assert np.array_equal(np.concatenate([r["x"] for r in rows]), big["x"][:8])
    # each row runs through ORT and gives that row's output: same values as the batch run
    outs = [next(onnx_graph.run_exposed(_relu("batch"), ["y"], [r]))["y"] for r in rows]
    assert np.array_equal(np.concatenate(outs), np.maximum(big["x"][:8], 0))


def test_static_batch_samples_are_left_whole() -> None:
    two = {"x": np.ones((2, 4), np.float32)}
    rows = onnx_graph.single_rows(_relu(2), [two, two, two], 2)
    assert len(rows) == 2 and all(r["x"].shape == (2, 4) for r in rows)
