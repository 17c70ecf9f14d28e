"""optpipe.onnx.weights_aside: weights out of a graph while a tool works on it, and back exactly as they were."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optpipe.onnx.weights_aside import put_back, set_aside, values_readable


def _model() -> onnx.ModelProto:
    """y = x @ W + b, W 64 x 64 (set aside), b 64 (small: stays)."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.standard_normal(64).astype(np.float32), "b")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [weight, bias])
    return helper.make_model(graph)


@pytest.mark.parametrize("external", [False, True])
def test_weights_come_back_byte_for_byte(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, external: bool) -> None:
    """Inline or external data, the model after put_back is the model onnx.load reads; the tool saw kilobytes."""
    path = tmp_path / "model.onnx"
    onnx.save_model(_model(), str(path), save_as_external_data=external, location="model.onnx.data",
                    size_threshold=0)
    expected = onnx.load(str(path)).SerializeToString()
    model = onnx.load(str(path), load_external_data=False)
    aside = set_aside(model, tmp_path)
    assert model.ByteSize() < 2048  # W's 16 KB are out; b (256 B) stays, read in when external
    put_back(model, aside)
    assert model.SerializeToString() == expected and not aside.inline


def _stale_file_beside_the_tool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, onnx.ModelProto]:
    """The model with external data in ``tmp/model/``, the working directory ``tmp`` holding a stale data file
    of the same name; the model's original values, and the model as loaded without them."""
    path = tmp_path / "model" / "model.onnx"
    path.parent.mkdir()
    onnx.save_model(_model(), str(path), save_as_external_data=True, location="model.onnx.data", size_threshold=0)
    original = onnx.load(str(path))
    monkeypatch.chdir(tmp_path)
    Path("model.onnx.data").write_bytes(b"\xff" * 64 * 64 * 8)
    return path, original


def test_a_small_external_tensor_becomes_inline_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A small tensor stays in the graph the tool sees as inline bytes, not a location the tool would resolve
    against its own working directory (where a stale file of the same name reads the wrong values)."""
    path, original = _stale_file_beside_the_tool(tmp_path, monkeypatch)
    model = onnx.load(str(path), load_external_data=False)
    set_aside(model, path.parent)
    small = model.graph.initializer[1]
    assert small.data_location == TensorProto.DEFAULT and not small.external_data
    np.testing.assert_array_equal(numpy_helper.to_array(small), numpy_helper.to_array(original.graph.initializer[1]))


def test_a_placeholder_reads_the_real_values_only_while_the_tool_runs(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside :func:`values_readable` a read fails instead of reading a same-named file where the tool runs."""
    path, original = _stale_file_beside_the_tool(tmp_path, monkeypatch)
    weight = numpy_helper.to_array(original.graph.initializer[0])
    model = onnx.load(str(path), load_external_data=False)
    aside = set_aside(model, path.parent)
    with pytest.raises(Exception, match="optpipe-weights-set-aside"):
        numpy_helper.to_array(model.graph.initializer[0])
    with values_readable(aside):
        np.testing.assert_array_equal(numpy_helper.to_array(model.graph.initializer[0]), weight)


def test_a_weight_the_tool_reads_and_rewrites_comes_back_inline(tmp_path: Path) -> None:
    """onnxslim reads an Add's large constant (is it all zeros?) and writes it anew, raw bytes under the
    placeholder's EXTERNAL mark: the result is the model onnxslim makes of the whole model, byte for byte.

    Why: ViT-B/16's position embeddings (x + P) came back as EXTERNAL with no location, and the simplify pass
    failed ("Location of external TensorProto ... should not be empty"); BERT's weights are never read.
    """
    import onnxslim

    rng = np.random.default_rng(1)
    position = numpy_helper.from_array(rng.standard_normal((1, 17, 64)).astype(np.float32), "P")
    graph = helper.make_graph([helper.make_node("Add", ["x", "P"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 17, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 17, 64])], [position])
    path = tmp_path / "model.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    expected = onnxslim.slim(onnx.load(str(path))).SerializeToString()
    model = onnx.load(str(path), load_external_data=False)
    aside = set_aside(model, tmp_path)
    with values_readable(aside):
        slimmed = onnxslim.slim(model)
    put_back(slimmed, aside)
    onnx.checker.check_model(slimmed)
    assert slimmed.SerializeToString() == expected
    np.testing.assert_array_equal(numpy_helper.to_array(slimmed.graph.initializer[0]), numpy_helper.to_array(position))
