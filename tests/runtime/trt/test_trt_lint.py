"""CPU tests for the static TensorRT lint, on small models built with onnx.helper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from optpipe.core.errors import UserInputError
from optpipe.core.tensor_spec import DynamicDim
from optpipe.runtime.tensorrt.lint import (
    LintProblem,
    format_problems,
    has_errors,
    lint_model,
    load_support_table,
)

F = TensorProto.FLOAT


def make(nodes, inputs, outputs, inits=(), opset=17, domains=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    opsets = [helper.make_opsetid("", opset), *[helper.make_opsetid(d, 1) for d in domains]]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 10  # onnx 1.23 writes IR 14, which onnxruntime refuses
    return model


def vi(name, shape, elem=F):
    return helper.make_tensor_value_info(name, elem, shape)


def init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def only(problems: list[LintProblem], code: str) -> LintProblem:
    matching = [p for p in problems if p.code == code]
    assert len(matching) == 1, format_problems(problems)
    return matching[0]


def conv_qdq_model(
    *, act_type=np.int8, zp_value=0, w_axis=0, bias_int32=False, conv_op="Conv"
) -> onnx.ModelProto:
    """TensorRT-style QDQ Conv: Q/DQ on activation (per tensor) and weight (per channel)."""
    rng = np.random.default_rng(0)
    c_out, c_in = 4, 3
    w_shape = (c_out, c_in, 3, 3) if conv_op == "Conv" else (c_in, c_out, 3, 3)
    w = rng.integers(-127, 127, size=w_shape).astype(np.int8)
    n_scales = w_shape[w_axis]
    inits = [
        init("x_scale", np.float32(0.05)),
        init("x_zp", np.array(zp_value, dtype=act_type)),
        init("w_q", w),
        init("w_scale", np.full(n_scales, 0.01, np.float32)),
        init("w_zp", np.zeros(n_scales, np.int8)),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"], name="q_x"),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xdq"], name="dq_x"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["wdq"], name="dq_w", axis=w_axis),
    ]
    conv_inputs = ["xdq", "wdq"]
    if bias_int32:
        inits += [init("b_q", np.zeros(c_out, np.int32)), init("b_scale", np.full(c_out, 5e-4, np.float32))]
        nodes.append(helper.make_node("DequantizeLinear", ["b_q", "b_scale"], ["bdq"], name="dq_b", axis=0))
        conv_inputs.append("bdq")
    nodes.append(helper.make_node(conv_op, conv_inputs, ["y"], name="conv", pads=[1, 1, 1, 1]))
    y_shape = [1, c_out, 8, 8]  # pads=1, k=3: same spatial size for Conv and ConvTranspose
    return make(nodes, [vi("x", [1, c_in, 8, 8])], [vi("y", y_shape)], inits, opset=19)


def test_support_table_records_source_and_range() -> None:
    table = load_support_table()
    assert table["source"]["url"].startswith("https://github.com/onnx/onnx-tensorrt")
    assert table["source"]["tensorrt_version"] and table["source"]["retrieved"]
    assert table["opset"]["min"] <= 17 <= table["opset"]["max"]
    assert table["operators"]["Conv"]["supported"] is True
    assert table["operators"]["Unique"]["supported"] is False


def test_clean_fp32_model_has_no_problems(tmp_path: Path) -> None:
    model = make(
        [helper.make_node("Relu", ["x"], ["r"], name="relu"), helper.make_node("Add", ["r", "c"], ["y"])],
        [vi("x", [2, 3])],
        [vi("y", [2, 3])],
        [init("c", np.ones((2, 3), np.float32))],
    )
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    assert lint_model(path) == []
    assert not has_errors(lint_model(model))


def test_clean_tensorrt_int8_qdq_model_has_no_problems() -> None:
    model = conv_qdq_model()
    onnx.checker.check_model(model)
    ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])  # is valid ONNX
    assert lint_model(model) == []


def test_unsupported_op() -> None:
    model = make([helper.make_node("Unique", ["x"], ["y"], name="uniq")], [vi("x", [4])], [vi("y", None)])
    problem = only(lint_model(model), "unsupported-op")
    assert problem.node == "uniq" and problem.severity == "error"
    assert "Unique" in problem.message


def test_com_microsoft_op() -> None:
    node = helper.make_node("FusedGemm", ["x", "w"], ["y"], name="fused", domain="com.microsoft")
    model = make(
        [node],
        [vi("x", [2, 2])],
        [vi("y", None)],
        [init("w", np.eye(2, dtype=np.float32))],
        domains=["com.microsoft"],
    )
    problem = only(lint_model(model), "non-standard-domain")
    assert problem.node == "fused" and "com.microsoft" in problem.message


def test_ort_weight_only_int4_says_what_tensorrt_11_would_need() -> None:
    """``--precision int4-weight``'s MatMulNBits: an error that names the standard-ONNX form TensorRT parses."""
    node = helper.make_node("MatMulNBits", ["x", "w", "s"], ["y"], name="fc_Q4", domain="com.microsoft",
                            K=32, N=2, bits=4, block_size=32)  # fmt: skip
    model = make([node], [vi("x", [2, 32])], [vi("y", None)],
                 [init("w", np.zeros((2, 1, 16), np.uint8)), init("s", np.ones((2, 1), np.float32))],
                 domains=["com.microsoft"])  # fmt: skip
    problem = only(lint_model(model), "ort-weight-only-int4")
    assert problem.node == "fc_Q4" and problem.severity == "error"
    assert "TensorRT 11 would need" in problem.message and "blocked DequantizeLinear" in problem.message
    assert "cpu target" in problem.fix


def test_nonzero_zero_point() -> None:
    problems = lint_model(conv_qdq_model(zp_value=3))
    assert {p.node for p in problems if p.code == "qdq-zero-point"} == {"q_x", "dq_x"}


def test_uint8_qdq() -> None:
    problems = lint_model(conv_qdq_model(act_type=np.uint8))
    assert {p.node for p in problems if p.code == "qdq-type"} == {"q_x", "dq_x"}
    assert has_errors(problems)


def test_quantize_without_zero_point_defaults_to_uint8() -> None:
    model = make(
        [helper.make_node("QuantizeLinear", ["x", "s"], ["y"], name="q")],
        [vi("x", [2])],
        [vi("y", None, TensorProto.UINT8)],
        [init("s", np.float32(0.1))],
    )
    assert only(lint_model(model), "qdq-type").node == "q"


def test_wrong_conv_weight_axis() -> None:
    problem = only(lint_model(conv_qdq_model(w_axis=1)), "qdq-axis")
    assert problem.node == "dq_w" and "axis 0" in problem.message


def test_conv_transpose_weight_axis_is_one() -> None:
    assert lint_model(conv_qdq_model(conv_op="ConvTranspose", w_axis=1)) == []
    assert only(lint_model(conv_qdq_model(conv_op="ConvTranspose", w_axis=0)), "qdq-axis").node == "dq_w"


@pytest.mark.parametrize(("trans_b", "good", "bad"), [(0, 1, 0), (1, 0, 1)])
def test_gemm_weight_axis_depends_on_trans_b(trans_b: int, good: int, bad: int) -> None:
    w_shape = (6, 5) if trans_b else (5, 6)  # K=5, N=6

    def model(axis: int) -> onnx.ModelProto:
        n = w_shape[axis]
        return make(
            [
                helper.make_node("DequantizeLinear", ["w", "s", "z"], ["wd"], name="dq_w", axis=axis),
                helper.make_node("Gemm", ["x", "wd"], ["y"], name="gemm", transB=trans_b),
            ],
            [vi("x", [2, 5])],
            [vi("y", None)],
            [
                init("w", np.ones(w_shape, np.int8)),
                init("s", np.ones(n, np.float32)),
                init("z", np.zeros(n, np.int8)),
            ],
        )

    assert lint_model(model(good)) == []
    assert only(lint_model(model(bad)), "qdq-axis").node == "dq_w"


def test_matmul_weight_axis_is_last() -> None:
    def model(axis: int) -> onnx.ModelProto:
        n = (5, 6)[axis]
        return make(
            [
                helper.make_node("DequantizeLinear", ["w", "s", "z"], ["wd"], name="dq_w", axis=axis),
                helper.make_node("MatMul", ["x", "wd"], ["y"], name="mm"),
            ],
            [vi("x", [2, 5])],
            [vi("y", None)],
            [
                init("w", np.ones((5, 6), np.int8)),
                init("s", np.ones(n, np.float32)),
                init("z", np.zeros(n, np.int8)),
            ],
        )

    assert lint_model(model(1)) == []
    assert only(lint_model(model(0)), "qdq-axis").node == "dq_w"


def test_int32_bias_dequantize() -> None:
    assert only(lint_model(conv_qdq_model(bias_int32=True)), "qdq-int32-bias").node == "dq_b"


def test_fp8_qdq_is_a_warning_not_an_error() -> None:
    model = make(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q8"),
            helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dq8"),
        ],
        [vi("x", [2])],
        [vi("y", [2])],
        [init("s", np.float32(0.1)), helper.make_tensor("z", TensorProto.FLOAT8E4M3FN, [], [0.0])],
        opset=19,
    )
    problems = lint_model(model)
    assert {p.node for p in problems if p.code == "qdq-type"} == {"q8", "dq8"}
    assert not has_errors(problems)


def dynamic_model() -> onnx.ModelProto:
    return make(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")], [vi("x", ["batch", 3])], [vi("y", None)]
    )


def test_dynamic_dim_without_profile() -> None:
    problem = only(lint_model(dynamic_model()), "dynamic-dim-no-profile")
    assert problem.node == "x" and "'batch'" in problem.message


@pytest.mark.parametrize(
    "profiles",
    [[DynamicDim("batch", 1, 4, 8)], {"batch": (1, 4, 8)}, {"x": [[1, 3], [4, 3], [8, 3]]}],
)
def test_dynamic_dim_with_profile(profiles: object) -> None:
    assert lint_model(dynamic_model(), shape_profiles=profiles) == []  # type: ignore[arg-type]


def test_profile_for_other_axis_does_not_cover() -> None:
    problems = lint_model(dynamic_model(), shape_profiles=[DynamicDim("seq", 1, 4, 8)])
    assert only(problems, "dynamic-dim-no-profile").node == "x"


def test_invalid_profile_bounds() -> None:
    problems = lint_model(dynamic_model(), shape_profiles=[DynamicDim("batch", 8, 4, 1)])
    assert "profile-invalid" in [p.code for p in problems]


def test_int64_initializer_out_of_int32_range() -> None:
    model = make(
        [helper.make_node("Add", ["x", "big"], ["y"], name="add")],
        [vi("x", [2], TensorProto.INT64)],
        [vi("y", [2], TensorProto.INT64)],
        [init("big", np.array([1, 2**40], np.int64))],
    )
    problem = only(lint_model(model), "int64-out-of-range")
    assert problem.node == "big" and problem.severity == "warning"


def test_int64_constant_node_out_of_range_is_named_by_node() -> None:
    const = helper.make_node(
        "Constant", [], ["c"], name="const_big", value=numpy_helper.from_array(np.array([-(2**35)], np.int64))
    )
    model = make(
        [const, helper.make_node("Add", ["x", "c"], ["y"], name="add")],
        [vi("x", [1], TensorProto.INT64)],
        [vi("y", [1], TensorProto.INT64)],
    )
    assert only(lint_model(model), "int64-out-of-range").node == "const_big"


def test_slice_end_sentinel_is_not_reported() -> None:
    model = make(
        [helper.make_node("Slice", ["x", "st", "en"], ["y"], name="sl")],
        [vi("x", [4])],
        [vi("y", None)],
        [init("st", np.array([1], np.int64)), init("en", np.array([2**63 - 1], np.int64))],
    )
    assert lint_model(model) == []


def test_opset_too_old() -> None:
    model = make(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")], [vi("x", [2])], [vi("y", [2])], opset=7
    )
    problem = only(lint_model(model), "opset-too-old")
    assert problem.node is None and "7" in problem.message


def test_unsupported_op_inside_subgraph_is_found() -> None:
    then_g = helper.make_graph(
        [helper.make_node("Unique", ["x"], ["u"], name="inner_unique")], "then", [], [vi("u", None)]
    )
    else_g = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [], [vi("e", None)])
    model = make(
        [helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then_g, else_branch=else_g)],
        [vi("cond", [], TensorProto.BOOL), vi("x", [4])],
        [vi("y", None)],
    )
    assert only(lint_model(model), "unsupported-op").node == "inner_unique"


def test_format_one_line_per_problem() -> None:
    problems = lint_model(conv_qdq_model(zp_value=3, act_type=np.uint8))
    text = format_problems(problems)
    assert len(text.splitlines()) == len(problems)
    assert text.splitlines()[0].startswith("error ")
    assert "Fix:" in problems[0].format()


def test_unreadable_file_is_user_input_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file at all")
    with pytest.raises(UserInputError, match="cannot read ONNX model"):
        lint_model(bad)
    with pytest.raises(UserInputError, match="not found"):
        lint_model(tmp_path / "missing.onnx")
