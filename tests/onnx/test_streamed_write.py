"""optpipe.onnx.streamed_write: the bytes onnx.save_model writes, a tensor at a time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optpipe.onnx import streamed_write
from optpipe.onnx.streamed_write import write_model


def _full_model() -> onnx.ModelProto:
    """Every kind of field around the initializers: metadata, functions, value_info, sparse initializer,
    a subgraph, a Constant node, opsets, doc strings, an initializer of typed (non-raw) data."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((300, 64)).astype(np.float32), "W")
    bias = helper.make_tensor("b", TensorProto.FLOAT, [64], rng.standard_normal(64).tolist())  # float_data
    ids = numpy_helper.from_array(np.arange(5, dtype=np.int64), "ids")
    sparse = helper.make_sparse_tensor(numpy_helper.from_array(np.array([1.5], np.float32), "S"),
                                       numpy_helper.from_array(np.array([3], np.int64)), [64])
    then = helper.make_graph([helper.make_node("Identity", ["y"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("Gather", ["W", "ids"], ["g"]),
             helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.ones(64, np.float32))),
             helper.make_node("Add", ["g", "b"], ["h"], doc_string="add"),
             helper.make_node("Add", ["h", "c"], ["y"]),
             helper.make_node("If", ["cond"], ["z"], then_branch=then, else_branch=then)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], [weight, bias, ids],
                              doc_string="graph doc", value_info=[helper.make_tensor_value_info(
                                  "h", TensorProto.FLOAT, [5, 64])], sparse_initializer=[sparse])
    function = helper.make_function("local", "f", ["a"], ["o"], [helper.make_node("Relu", ["a"], ["o"])],
                                    [helper.make_opsetid("", 17)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
                              functions=[function], producer_name="test", doc_string="model doc")
    helper.set_model_props(model, {"a": "1", "b": "2"})
    return model


@pytest.mark.parametrize("model", [_full_model(), helper.make_model(helper.make_graph([], "empty", [], [])),
                                   onnx.ModelProto(ir_version=8)], ids=["full", "no-initializer", "no-graph"])
def test_the_file_is_what_onnx_save_writes(tmp_path: Path, model: onnx.ModelProto) -> None:
    write_model(model, tmp_path / "m.onnx")
    onnx.save_model(model, str(tmp_path / "ref.onnx"))
    assert (tmp_path / "m.onnx").read_bytes() == (tmp_path / "ref.onnx").read_bytes()


def test_a_model_over_protobufs_limit_is_refused_before_writing_weights(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Over 2 GiB a protobuf reader cannot parse the file: refused with a reason (limit lowered for the test)."""
    monkeypatch.setattr(streamed_write, "PROTOBUF_LIMIT", 10_000)
    with pytest.raises(ValueError, match="external data"):
        write_model(_full_model(), tmp_path / "m.onnx")
