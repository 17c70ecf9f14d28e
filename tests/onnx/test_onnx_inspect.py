"""Tests for ``inspect_onnx`` / ``format_inspection`` on small models built with onnx.helper."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optpipe.core.errors import UserInputError
from optpipe.onnx.inspect import format_inspection, inspect_onnx


def _make_model(path: Path, *, external: bool = False) -> Path:
    """x[batch, 4] -> MatMul(W) -> Add(b) -> Relu -> Relu -> com.microsoft Gelu -> y[batch, 3]."""
    weight = numpy_helper.from_array(np.ones((4, 3), dtype=np.float32), "W")
    bias = numpy_helper.from_array(np.zeros((3,), dtype=np.float32), "b")
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h0"]),
        helper.make_node("Add", ["h0", "b"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("Relu", ["h2"], ["h3"]),
        helper.make_node("Gelu", ["h3"], ["y"], domain="com.microsoft"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        initializer=[weight, bias],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
        producer_name="optpipe-test",
        producer_version="1.0",
    )
    model.ir_version = 10
    if external:
        onnx.save(model, str(path), save_as_external_data=True, location="tiny.data", size_threshold=0)
    else:
        onnx.save(model, str(path))
    return path


def test_inspect_reports_interface_ops_and_sizes(tmp_path: Path) -> None:
    path = _make_model(tmp_path / "tiny.onnx")
    info = inspect_onnx(path)
    assert info["inputs"] == [{"name": "x", "shape": ["batch", 4], "dtype": "float32"}]
    assert info["outputs"] == [{"name": "y", "shape": ["batch", 3], "dtype": "float32"}]
    assert info["opsets"] == {"ai.onnx": 17, "com.microsoft": 1}
    assert info["ir_version"] == 10 and info["producer"] == "optpipe-test 1.0"
    assert next(iter(info["op_histogram"].items())) == ("Relu", 2)
    assert info["op_histogram"]["com.microsoft::Gelu"] == 1
    assert info["op_domains"] == {"ai.onnx": 4, "com.microsoft": 1}
    assert info["num_nodes"] == 5 and info["num_initializers"] == 2
    assert info["parameter_bytes"] == (12 + 3) * 4
    assert info["file_bytes"] == path.stat().st_size and info["external_data_bytes"] == 0
    json.dumps(info)  # reports embed it

    text = format_inspection(info)
    assert "x: float32[batch, 4]" in text and "com.microsoft (1)" in text and "Relu" in text


def test_inspect_external_data_and_subgraphs(tmp_path: Path) -> None:
    path = _make_model(tmp_path / "tiny.onnx", external=True)
    info = inspect_onnx(path)
    assert info["external_data_files"] == ["tiny.data"]
    assert info["external_data_bytes"] == (tmp_path / "tiny.data").stat().st_size > 0
    assert info["parameter_bytes"] == 60  # counted from dims, data never loaded
    assert "external data" in format_inspection(info)

    # Nodes inside an If's branches count too; unknown dims show as None / "?".
    branch = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["o"])],
        "branch",
        [],
        [helper.make_tensor_value_info("o", TensorProto.FLOAT, None)],
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)],
        "g",
        [
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x", TensorProto.INT64, [None]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.save(model, str(tmp_path / "if.onnx"))
    info = inspect_onnx(tmp_path / "if.onnx")
    assert info["op_histogram"] == {"Identity": 2, "If": 1}
    assert info["inputs"][1] == {"name": "x", "shape": [None], "dtype": "int64"}
    assert info["outputs"][0]["shape"] is None
    assert "y: float32?" in format_inspection(info)


@pytest.mark.parametrize("content", [b"this is not onnx\n", b"\xff\xfe" * 50, b""])
def test_inspect_rejects_corrupt_files(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(UserInputError, match=r"bad.onnx is not a valid ONNX model: ") as info:
        inspect_onnx(path)
    assert "\n" not in str(info.value)


def test_inspect_rejects_missing_file(tmp_path: Path) -> None:
    with pytest.raises(
        UserInputError, match=r"missing.onnx is not a valid ONNX model: the file does not exist"
    ):
        inspect_onnx(tmp_path / "missing.onnx")
