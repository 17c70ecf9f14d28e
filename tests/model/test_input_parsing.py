"""Tests for ``--input`` / ``--dynamic`` parsing, spec resolution and data generation."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from optpipe.core.errors import UserInputError
from optpipe.core.tensor_spec import DynamicDim, TensorSpec
from optpipe.model.input_parsing import (
    DynamicArg,
    InputArg,
    make_inputs,
    parse_dynamic,
    parse_input,
    resolve_input_specs,
)

# --- parse_input -------------------------------------------------------------------------------


def test_parse_input_defaults_to_float32() -> None:
    assert parse_input("x:2x3x224x224") == InputArg("x", (2, 3, 224, 224), "float32")


def test_parse_input_with_dtype_and_range() -> None:
    arg = parse_input("ids:2x128:int64:0..1000")
    assert arg == InputArg("ids", (2, 128), "int64", 0.0, 1000.0)


def test_parse_input_edge_single_dim_negative_float_range_and_case() -> None:
    arg = parse_input("x:5:FLOAT16:-1.5..2.5")
    assert arg.shape == (5,) and arg.dtype == "float16"
    assert (arg.low, arg.high) == (-1.5, 2.5)


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("x:2xAx3", r"dimension 'A' is not a positive integer \(expected NAME:SHAPE"),
        ("x:2x0", r"dimension '0' is not a positive integer"),
        ("x", r"wrong number of ':'-separated parts"),
        (":2x3", r"NAME is empty"),
        ("x:", r"SHAPE is empty"),
        ("x:2x3:complex64", r"unknown dtype 'complex64'; use one of: float32"),
        ("x:2x3:float32:1", r"value range '1' must be LOW..HIGH"),
        ("x:2x3:int64:0..1.5", r"must be two integers LOW..HIGH for dtype int64"),
        ("x:2x3:int64:5..5", r"value range '5..5' is empty"),
        ("x:2x3:uint8:0..300", r"does not fit uint8"),
        ("x:2x3:bool:0..1", r"range does not apply to bool"),
        ("x:2x3:float32:0..inf", r"must be finite"),
        ("x:2x3:float32:0..1:extra", r"wrong number of ':'-separated parts"),
    ],
)
def test_parse_input_rejects_malformed(text: str, pattern: str) -> None:
    with pytest.raises(UserInputError, match=pattern) as info:
        parse_input(text)
    assert "\n" not in str(info.value)


# --- parse_dynamic -----------------------------------------------------------------------------


def test_parse_dynamic_batch_means_axis_zero_of_every_input() -> None:
    assert parse_dynamic("batch=1:8:32") == DynamicArg(DynamicDim("batch", 1, 8, 32), None)


def test_parse_dynamic_named_axes_and_dotted_input_names() -> None:
    arg = parse_dynamic("seq=1:32:128@input_ids.1,input.1.2")
    assert arg.dim == DynamicDim("seq", 1, 32, 128)
    assert arg.axes == (("input_ids", 1), ("input.1", 2))
    assert arg.describe() == "seq=1:32:128@input_ids.1,input.1.2"


def test_parse_dynamic_edge_min_equals_max() -> None:
    assert parse_dynamic("batch=4:4:4").dim == DynamicDim("batch", 4, 4, 4)


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("batch", r"missing '='"),
        ("seq=1:32:128", r"say which axes 'seq' applies to, e.g. seq=1:32:128@input_ids.1"),
        ("batch=8:1:32", r"MIN <= OPT <= MAX, got 8:1:32"),
        ("batch=0:1:2", r"MIN '0' is not a positive integer"),
        ("batch=1:8", r"must be MIN:OPT:MAX"),
        ("seq=1:2:3@ids", r"axis 'ids' must be INPUT.AXIS"),
        ("seq=1:2:3@ids.x", r"axis 'ids.x' must be INPUT.AXIS"),
        ("seq=1:2:3@ids.1,ids.1", r"listed twice"),
        ("1seq=1:2:3@ids.1", r"dimension name '1seq'"),
    ],
)
def test_parse_dynamic_rejects_malformed(text: str, pattern: str) -> None:
    with pytest.raises(UserInputError, match=pattern):
        parse_dynamic(text)


# --- resolve_input_specs -----------------------------------------------------------------------

_TEXT_INPUTS = (["input_ids", "attention_mask"], [((2, 16), "int64"), ((2, 16), "int64")])


def test_resolve_marks_batch_and_named_axes() -> None:
    specs = resolve_input_specs(
        *_TEXT_INPUTS,
        [parse_dynamic("batch=1:8:32"), parse_dynamic("seq=1:32:128@input_ids.1,attention_mask.1")],
    )
    assert specs == (
        TensorSpec("input_ids", ("batch", "seq"), "int64"),
        TensorSpec("attention_mask", ("batch", "seq"), "int64"),
    )


def test_resolve_without_dynamic_keeps_static_shapes_and_normalises_dtype() -> None:
    specs = resolve_input_specs(["x", "ids"], [((1, 3), np.float32), ((1, 2), "torch.int64")], [])
    assert specs == (TensorSpec("x", (1, 3), "float32"), TensorSpec("ids", (1, 2), "int64"))


def test_resolve_scalar_input_allowed_with_explicit_axes() -> None:
    specs = resolve_input_specs(
        ["x", "scale"], [((4, 3), "float32"), ((), "float32")], [parse_dynamic("batch=1:4:8@x.0")]
    )
    assert specs[0].shape == ("batch", 3) and specs[1].shape == ()


@pytest.mark.parametrize(
    ("names", "examples", "dynamic", "pattern"),
    [
        (
            *_TEXT_INPUTS,
            ["seq=1:32:128@ids.1"],
            r"no input named 'ids'; inputs are: input_ids, attention_mask",
        ),
        (
            *_TEXT_INPUTS,
            ["seq=1:32:128@input_ids.2"],
            r"has rank 2, so axis 2 does not exist \(valid axes: 0\.\.1\)",
        ),
        (*_TEXT_INPUTS, ["batch=4:8:32"], r"example size of input_ids.0 is 2, outside 4..32"),
        (*_TEXT_INPUTS, ["batch=1:2:4", "seq=1:2:4@input_ids.0"], r"already dynamic as 'batch'"),
        (*_TEXT_INPUTS, ["batch=1:2:4", "batch=1:2:8"], r"declared more than once"),
        (["x", "s"], [((2, 3), "float32"), ((), "float32")], ["batch=1:2:4"], r"s has no axes \(a scalar\)"),
        (["x"], [((2, 3), "float32"), ((2,), "float32")], [], r"1 input names \(x\) but 2 example inputs"),
        (["x", "x"], [((2,), "float32"), ((2,), "float32")], [], r"repeated: x"),
    ],
)
def test_resolve_rejects_inconsistent_declarations(
    names: list[str], examples: list[tuple[tuple[int, ...], str]], dynamic: list[str], pattern: str
) -> None:
    with pytest.raises(UserInputError, match=pattern):
        resolve_input_specs(names, examples, [parse_dynamic(d) for d in dynamic])


# --- make_inputs -------------------------------------------------------------------------------


def test_make_inputs_is_deterministic_and_respects_dtypes_and_ranges() -> None:
    args = [
        parse_input("x:2x3"),
        parse_input("ids:4x50:int64:0..1000"),
        parse_input("mask:4x50:int32"),
        parse_input("flag:3:bool"),
        parse_input("img:2x8:uint8:0..256"),
        parse_input("u:100:float16:2..3"),
    ]
    first, second = make_inputs(args, seed=7), make_inputs(args, seed=7)
    for a, b, arg in zip(first, second, args, strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.shape == arg.shape and a.dtype == np.dtype(arg.dtype)
    x, ids, mask, _, _, u = first
    assert ids.min() >= 0 and ids.max() < 1000 and ids.max() > 2
    assert set(np.unique(mask)) <= {0, 1}
    assert u.min() >= 2 and u.max() <= 3
    assert not np.array_equal(x, make_inputs(args, seed=8)[0])


def test_huge_input_is_refused_at_parse_time() -> None:
    with pytest.raises(UserInputError, match=r"10,000,000,000,000 elements is more than the 2,147,483,648"):
        parse_input("x:100000x100000x1000")


def test_make_inputs_out_of_memory_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import optpipe.model.input_parsing as input_parsing

    def no_memory(*args: object, **kwargs: object) -> np.ndarray:
        raise MemoryError

    monkeypatch.setattr(input_parsing, "_random_array", no_memory, raising=False)
    with pytest.raises(UserInputError, match=r"input 'x': not enough memory for an example of shape 2x3"):
        make_inputs([parse_input("x:2x3")])


@pytest.mark.parametrize("flag", ["x:1000x1000", "x:1000x1000:float32:0..1", "ids:1000x1000:int8:0..100"])
def test_make_inputs_generates_in_the_target_dtype(flag: str) -> None:
    import tracemalloc

    tracemalloc.start()
    try:
        (x,) = make_inputs([parse_input(flag)])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2.5 * x.nbytes, (flag, peak, x.nbytes)  # no float64/int64 intermediate of the whole input


def test_make_inputs_edge_empty() -> None:
    assert make_inputs([]) == ()


def test_make_inputs_rejects_unknown_dtype() -> None:
    with pytest.raises(UserInputError, match=r"unsupported dtype 'complex64'"):
        make_inputs([InputArg("x", (2,), "complex64")])


def test_modules_do_not_import_torch() -> None:
    code = (
        "import sys, optpipe.model.input_parsing, optpipe.model.loading, optpipe.onnx.inspect; "
        "assert 'torch' not in sys.modules, 'torch imported at module import time'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("text", ["x:2x²", "x:2x٣"])
def test_non_ascii_digits_are_refused_in_one_line(text: str) -> None:
    with pytest.raises(UserInputError, match="is not a positive integer"):
        parse_input(text)


def test_dynamic_bounds_must_fit_32_bits() -> None:
    with pytest.raises(UserInputError, match="above 2147483647"):
        parse_dynamic("batch=1:2:99999999999999999999999")
    with pytest.raises(UserInputError, match="is not a positive integer"):
        parse_dynamic("batch=1:²:4")
