"""Every runner has one lifecycle: ``close()`` (safe twice) and ``with runner:``, whatever runtime it wraps."""

from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from optpipe.runtime.runners import OrtRunner, Runner, TorchRunner


def _relu_onnx(path: Path) -> Path:
    value = helper.make_tensor_value_info
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [value("x", TensorProto.FLOAT, [2])], [value("y", TensorProto.FLOAT, [2])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_ort_and_torch_runners_close_the_same_way(tmp_path: Path) -> None:
    feed = {"x": np.array([-1.0, 2.0], np.float32)}
    runners: list[Runner] = [OrtRunner(_relu_onnx(tmp_path / "m.onnx")),
                             TorchRunner(torch.nn.ReLU(), ("x",), ("y",))]
    for runner in runners:
        with runner as entered:
            assert entered is runner
            np.testing.assert_array_equal(entered.infer(feed)["y"], [0.0, 2.0])
        runner.close()  # idempotent: a second close after the with-block is harmless


def test_closing_an_ort_runner_frees_its_session_now(tmp_path: Path) -> None:
    runner = OrtRunner(_relu_onnx(tmp_path / "m.onnx"))
    session = weakref.ref(runner.session)
    runner.close()
    assert session() is None  # freed at close(), while the runner object is still alive
