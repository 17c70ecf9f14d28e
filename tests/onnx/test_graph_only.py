"""optpipe.onnx.graph_only: a model's graph read without its large weights' bytes, the rest exactly as onnx reads it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optpipe.onnx.graph_only import load_graph_only
from optpipe.onnx.utils import onnx_files
from optpipe.precision.onnx_graph import load_skeleton, skeleton


def _model() -> onnx.ModelProto:
    """A large float weight (raw bytes), a large float weight in typed float_data, a small float bias,
    a large int64 table (kept: not a float), a Constant node and model metadata."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "W")
    typed = helper.make_tensor("T", TensorProto.FLOAT, [64, 32], rng.standard_normal(64 * 32).tolist())
    bias = numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b")
    table = numpy_helper.from_array(np.arange(2048, dtype=np.int64), "idx")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("MatMul", ["h", "T"], ["g"]),
             helper.make_node("Add", ["g", "b"], ["y"]), helper.make_node("Gather", ["idx", "i"], ["z"]),
             helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.ones(4, np.float32)))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64]),
                                           helper.make_tensor_value_info("i", TensorProto.INT64, [3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32]),
                               helper.make_tensor_value_info("z", TensorProto.INT64, [3])],
                              [weight, typed, bias, table])
    model = helper.make_model(graph, producer_name="test", doc_string="doc")
    helper.set_model_props(model, {"k": "v"})
    return model


@pytest.mark.parametrize("external", [False, True])
def test_the_skeleton_is_the_one_of_the_whole_model(tmp_path: Path, external: bool) -> None:
    path = tmp_path / "m.onnx"
    onnx.save_model(_model(), str(path), save_as_external_data=external, location="m.onnx.data",
                    size_threshold=1024)
    light = load_graph_only(path)
    assert load_skeleton(path).SerializeToString() == skeleton(onnx.load(str(path))).SerializeToString()
    by_name = {t.name: t for t in light.graph.initializer}
    assert not by_name["T"].float_data and by_name["b"].raw_data  # large values gone, small ones kept
    if external:  # its external-data entries are kept: where its weights are
        assert {e.value for e in by_name["W"].external_data if e.key == "location"} == {"m.onnx.data"}
        assert onnx_files(path) == [path, tmp_path / "m.onnx.data"]
    else:
        assert not by_name["W"].raw_data and light.ByteSize() < 20_000 < path.stat().st_size


def test_a_file_that_is_not_a_model_raises(tmp_path: Path) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\x0f\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff")
    with pytest.raises(Exception):  # noqa: B017  # ValueError or protobuf's DecodeError: callers turn either into one line
        load_graph_only(path)
