"""shape_profiles_for_lint: ``optpipe lint --dynamic`` values become shape profiles below the CLI (no click needed)."""

from __future__ import annotations

import re

import onnx
import pytest
from onnx import TensorProto, helper

from optpipe.core.errors import UserInputError
from optpipe.model.input_parsing import DynamicArg, parse_dynamic
from optpipe.runtime.tensorrt.shape_profiles import shape_profiles_for_lint


def _model(shape: list[str | int | None]) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
    return helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]))


def _parse(text: str) -> DynamicArg:
    return parse_dynamic(text, bare_names=True)


def test_an_unnamed_axis_given_by_input_and_axis_gets_full_shapes() -> None:
    profiles = shape_profiles_for_lint(_model([2, None]), ["seq=1:8:32@x.1"], _parse)
    assert profiles is not None
    assert profiles["x"] == ((2, 1), (2, 8), (2, 32))
    assert shape_profiles_for_lint(_model([2, None]), [], _parse) is None


def test_the_first_bad_value_is_the_one_reported() -> None:
    with pytest.raises(UserInputError, match=re.escape("--dynamic 'seq=1:8:32@y.1': the model has no input 'y'")):
        shape_profiles_for_lint(_model([2, "seq"]), ["seq=1:8:32@y.1", "batch=8:1"], _parse)
