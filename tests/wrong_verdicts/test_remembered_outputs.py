"""Wrong verdicts: simplify's equivalence check judges a result against outputs remembered for its input.

The case that would fool it: outputs remembered for one model recalled for another (a file rewritten at the same
path within the file system's timestamp granularity, its data file changed beside an untouched graph), so a
result is compared with values its input never computed. The memo is keyed by the content's sha256, as the
passes hash their artifacts. The twin: the same content recalls exactly what was remembered.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from optpipe.compare import onnx_outputs
from optpipe.core.artifact import sha256_files
from optpipe.onnx.utils import onnx_files, save_onnx


def _model(scale: float) -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.full((32, 32), scale, np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])], [weight])
    return helper.make_model(graph)


def _sha(path: Path) -> str:
    return sha256_files(onnx_files(path))


def _outputs(value: float) -> list[dict[str, np.ndarray]]:
    return [{"y": np.full((1, 4), value, np.float32)}]


def test_outputs_of_a_file_rewritten_in_place_are_not_recalled(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    save_onnx(_model(1.0), path)
    memo: dict[object, object] = {}
    onnx_outputs.remember(memo, _sha(path), 2, _outputs(4.0))
    path.write_bytes(_model(2.0).SerializeToString())  # another model, written in place at once
    assert onnx_outputs.recall(memo, _sha(path), 2) is None


def test_outputs_of_a_file_whose_external_data_changed_are_not_recalled(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    save_onnx(_model(1.0), path, external_above=0)
    memo: dict[object, object] = {}
    onnx_outputs.remember(memo, _sha(path), 2, _outputs(4.0))
    data = tmp_path / "model.onnx.data"
    data.write_bytes(data.read_bytes()[::-1])  # the graph file untouched, its weights changed
    assert onnx_outputs.recall(memo, _sha(path), 2) is None


def test_twin_the_same_file_recalls_what_was_remembered_and_only_for_its_threads(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    save_onnx(_model(1.0), path)
    memo: dict[object, object] = {}
    onnx_outputs.remember(memo, _sha(path), 2, _outputs(4.0))
    recalled = onnx_outputs.recall(memo, _sha(path), 2)
    assert recalled is not None and np.array_equal(recalled[0]["y"], _outputs(4.0)[0]["y"])
    assert onnx_outputs.recall(memo, _sha(path), 1) is None  # computed with other threads: not the same run
