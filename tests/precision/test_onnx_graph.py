"""optpipe.precision.onnx_graph: the weightless skeleton types every tensor as the whole model does, and
over protobuf's 2 GiB sessions and shape inference go through a file with external data."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
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


class _Encoder(torch.nn.Module):
    """Embedding, a transformer layer (Reshape/Transpose on computed shapes), a head: a graph shapes flow through."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(500, 64)
        self.layer = torch.nn.TransformerEncoderLayer(64, 4, 128, batch_first=True, dropout=0.0)
        self.head = torch.nn.Linear(64, 8)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer(self.embed(ids)).mean(dim=1))


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> onnx.ModelProto:
    path = tmp_path_factory.mktemp("enc") / "encoder.onnx"
    torch.onnx.export(_Encoder().eval(), (torch.zeros(2, 16, dtype=torch.int64),), str(path), dynamo=False,
                      input_names=["ids"], dynamic_axes={"ids": {0: "batch", 1: "seq"}})
    return onnx.load(str(path))


@pytest.mark.slow
def test_skeleton_keeps_shapes_and_types_but_not_the_weights(encoder: onnx.ModelProto) -> None:
    light = onnx_graph.skeleton(encoder)
    assert light.ByteSize() < encoder.ByteSize() / 10
    assert [n.name for n in light.graph.node] == [n.name for n in encoder.graph.node]
    dims = {t.name: (t.data_type, list(t.dims)) for t in encoder.graph.initializer}
    assert {t.name: (t.data_type, list(t.dims)) for t in light.graph.initializer} == dims


@pytest.mark.slow
def test_types_from_the_skeleton_equal_those_of_the_whole_model(encoder: onnx.ModelProto) -> None:
    """The weightless inference must type every tensor as inference on the model with its weights does."""
    whole = onnx.shape_inference.infer_shapes(encoder)
    expected = {v.name: v.type.tensor_type.elem_type for v in [*whole.graph.input, *whole.graph.value_info,
                                                                *whole.graph.output]
                if v.type.HasField("tensor_type")}
    assert len(expected) > 20
    assert onnx_graph.float_tensor_types(encoder) == expected


@pytest.mark.slow
def test_run_exposed_leaves_the_model_as_it_was(encoder: onnx.ModelProto) -> None:
    before = encoder.SerializeToString()
    names = [n.output[0] for n in encoder.graph.node if n.op_type == "MatMul"][:3]
    ids = {"ids": np.arange(32, dtype=np.int64).reshape(2, 16)}
    values = next(onnx_graph.run_exposed(encoder, names, [ids]))
    assert set(values) == set(names) and all(np.isfinite(v).all() for v in values.values())
    assert encoder.SerializeToString() == before
