"""Output names after a dynamo export: a name an internal value already has does not break the graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from optpipe.onnx.utils import rename_outputs


class Embedder(torch.nn.Module):
    """Its ``embedding`` submodule's value is called ``embedding`` in the dynamo graph."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embedding = torch.nn.Embedding(10, 4)
        self.proj = torch.nn.Linear(4, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.proj(self.embedding(ids).mean(1))


@pytest.mark.slow
def test_an_output_named_like_an_internal_value_exports_with_dynamo(tmp_path: Path) -> None:
    """torch's own output_names gave "Duplicate definition of name (embedding)" and a TorchScript fallback."""
    from optpipe.builder.run import build

    torch.manual_seed(0)  # the ids (and so their real lengths) must not depend on the tests run before
    ids = torch.randint(0, 10, (2, 5))
    report = build(Embedder().eval(), (ids,), out_dir=tmp_path / "out", input_names=["ids"],
                   output_names=["embedding"], benchmark=False, exporter="dynamo", log=lambda m: None)  # fmt: skip
    assert report.passed
    assert not any("TorchScript" in w or "dynamo" in w for w in report.warnings), report.warnings
    model = onnx.load(str(tmp_path / "out" / "model.export.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert [o.name for o in model.graph.output] == ["embedding"]
    produced = [name for node in model.graph.node for name in node.output]
    assert len(produced) == len(set(produced))  # single static assignment


def _two_outputs() -> onnx.ModelProto:
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["a"], ["b"]),
             helper.make_node("Abs", ["b"], ["c"])]  # fmt: skip
    def value(name: str) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, [2])

    graph = helper.make_graph(nodes, "g", [value("x")], [value("b"), value("c")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_swapped_and_clashing_names_keep_every_value_apart() -> None:
    model = _two_outputs()
    rename_outputs(model, ["c", "a"])  # 'c' is the other output, 'a' an internal value
    onnx.checker.check_model(model, full_check=True)
    assert [o.name for o in model.graph.output] == ["c", "a"]
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.array([1.0, -2.0], dtype=np.float32)
    first, second = sess.run(None, {"x": x})
    assert np.array_equal(first, -np.maximum(x, 0)) and np.array_equal(second, np.maximum(x, 0))


def test_a_wrong_number_of_names_is_refused() -> None:
    with pytest.raises(ValueError, match="2 outputs, 1 names"):
        rename_outputs(_two_outputs(), ["only"])
