"""Parse ``--input`` and ``--dynamic`` options and make example input data.

Users describe inputs on the command line when their model file has no
``example_inputs()``, and declare which axes may vary at run time. Both are
parsed here into plain values so that every mistake (a typo in a shape, a range
that does not contain the example size, an axis that does not exist) is caught
before a long export or engine build starts, with one line saying what to fix.

Grammar::

    --input   NAME:SHAPE[:DTYPE[:LOW..HIGH]]        x:2x3x224x224   ids:2x128:int64:0..1000
    --dynamic NAME=MIN:OPT:MAX[@INPUT.AXIS,...]     batch=1:8:32    seq=1:32:128@ids.1,mask.1

Generated data (:func:`make_inputs`) is deterministic for a given seed:

* floating dtypes: standard normal, or uniform in ``[LOW, HIGH)`` when a range is given;
* integer dtypes: uniform integers in ``[0, 2)`` by default - small enough to be a
  valid index for any embedding table and a valid 0/1 mask - or ``[LOW, HIGH)``
  (``HIGH`` exclusive, as in ``numpy``: ``0..1000`` suits a vocabulary of 1000);
* ``bool``: ``True``/``False`` with equal probability (a range is refused).

This module imports only numpy, never torch, so ``optpipe --help`` stays fast.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from optpipe.core.errors import UserInputError
from optpipe.core.tensor_spec import Dim, DynamicDim, TensorSpec

SUPPORTED_DTYPES: tuple[str, ...] = (
    "float32",
    "float16",
    "float64",
    "int64",
    "int32",
    "int8",
    "uint8",
    "bool",
)
DEFAULT_DTYPE = "float32"
DEFAULT_INT_RANGE: tuple[int, int] = (0, 2)
BATCH = "batch"

_INPUT_USAGE = "expected NAME:SHAPE[:DTYPE[:LOW..HIGH]], e.g. x:2x3x224x224 or ids:2x128:int64:0..1000"
_DYNAMIC_USAGE = "expected NAME=MIN:OPT:MAX[@INPUT.AXIS,...], e.g. batch=1:8:32 or seq=1:32:128@input_ids.1"
_DIM_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# str.isdigit() accepts digits such as '²' that int() rejects; shapes take ASCII digits only.
_ASCII_INT = re.compile(r"[0-9]+")
MAX_DIM = 2**31 - 1
# Largest --input example (elements): generated in memory, fed to PyTorch and every engine.
MAX_INPUT_ELEMENTS = 2**31


@dataclass(frozen=True)
class InputArg:
    """One parsed ``--input``: a concrete example shape, a dtype and an optional value range.

    ``low``/``high`` are ``None`` when the default distribution applies.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str = DEFAULT_DTYPE
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class DynamicArg:
    """One parsed ``--dynamic``: the bounds and which ``(input name, axis)`` pairs they apply to.

    ``axes is None`` means axis 0 of every input (only allowed for ``batch``).
    """

    dim: DynamicDim
    axes: tuple[tuple[str, int], ...] | None = None

    def describe(self) -> str:
        """The option as the user would write it, for error messages."""
        text = f"{self.dim.axis_name}={self.dim.min}:{self.dim.opt}:{self.dim.max}"
        if self.axes is not None:
            text += "@" + ",".join(f"{name}.{axis}" for name, axis in self.axes)
        return text


def check_unique_names(what: str, names: Sequence[str]) -> None:
    """Refuse a repeated name: ONNX would rename one copy (``a.1``) and parity would check only the other."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise UserInputError(f"{what}: '{name}' is given more than once; every name must be unique")
        seen.add(name)


def _is_integer_dtype(dtype: str) -> bool:
    return dtype.startswith(("int", "uint"))


def _parse_number(text: str, integer: bool) -> float | None:
    """Parse a range bound; ``None`` when it is not a number of the required kind."""
    try:
        return float(int(text)) if integer else float(text)
    except ValueError:
        return None


def _parse_range(raw: str, part: str, dtype: str) -> tuple[float, float]:
    """Parse ``LOW..HIGH`` and check it suits ``dtype`` (kind and representable values)."""
    where = f"--input '{raw}'"
    if dtype == "bool":
        raise UserInputError(
            f"{where}: a value range does not apply to bool inputs; drop ':{part}' "
            "(bool data is random True/False)"
        )
    low_text, sep, high_text = part.partition("..")
    if not sep:
        raise UserInputError(
            f"{where}: value range '{part}' must be LOW..HIGH, e.g. 0..1000 ({_INPUT_USAGE})"
        )
    integer = _is_integer_dtype(dtype)
    low = _parse_number(low_text.strip(), integer)
    high = _parse_number(high_text.strip(), integer)
    kind = "integers" if integer else "numbers"
    if low is None or high is None:
        raise UserInputError(
            f"{where}: value range '{part}' must be two {kind} LOW..HIGH for dtype {dtype}, e.g. 0..1000"
        )
    if not low < high:
        raise UserInputError(
            f"{where}: value range '{part}' is empty; LOW must be smaller than HIGH "
            "(HIGH is exclusive for integer dtypes)"
        )
    if integer:
        info = np.iinfo(np.dtype(dtype))
        # HIGH is exclusive, so it may be one past the largest value.
        if low < info.min or high - 1 > info.max:
            raise UserInputError(
                f"{where}: value range '{part}' does not fit {dtype} "
                f"(values {info.min}..{int(info.max) + 1} with HIGH exclusive)"
            )
    elif not (np.isfinite(low) and np.isfinite(high)):
        raise UserInputError(f"{where}: value range '{part}' must be finite")
    return low, high


def parse_input(text: str) -> InputArg:
    """Parse one ``--input NAME:SHAPE[:DTYPE[:LOW..HIGH]]`` value.

    SHAPE is positive integers joined by ``x`` (``2x3x224x224``); DTYPE defaults to
    float32. Every malformed part raises :class:`UserInputError` naming that part.
    """
    parts = text.strip().split(":")
    if len(parts) < 2 or len(parts) > 4:
        raise UserInputError(f"--input '{text}': wrong number of ':'-separated parts ({_INPUT_USAGE})")
    name, shape_text = parts[0].strip(), parts[1].strip()
    if not name:
        raise UserInputError(f"--input '{text}': the input NAME is empty ({_INPUT_USAGE})")
    if not shape_text:
        raise UserInputError(f"--input '{text}': the SHAPE is empty ({_INPUT_USAGE})")
    shape: list[int] = []
    for dim in re.split(r"[xX]", shape_text):
        dim = dim.strip()
        if not _ASCII_INT.fullmatch(dim) or int(dim) < 1:
            raise UserInputError(
                f"--input '{text}': dimension '{dim}' is not a positive integer ({_INPUT_USAGE})"
            )
        shape.append(int(dim))
    elements = math.prod(shape)
    if elements > MAX_INPUT_ELEMENTS:
        raise UserInputError(
            f"--input '{text}': {elements:,} elements is more than the {MAX_INPUT_ELEMENTS:,} an example input "
            "may have; an example only needs a small batch (e.g. 2x...)"
        )

    dtype = DEFAULT_DTYPE
    if len(parts) >= 3:
        dtype = parts[2].strip().lower()
        if dtype not in SUPPORTED_DTYPES:
            raise UserInputError(
                f"--input '{text}': unknown dtype '{parts[2]}'; use one of: {', '.join(SUPPORTED_DTYPES)}"
            )
    low = high = None
    if len(parts) == 4:
        low, high = _parse_range(text, parts[3].strip(), dtype)
    return InputArg(name=name, shape=tuple(shape), dtype=dtype, low=low, high=high)


def parse_dynamic(text: str, *, bare_names: bool = False) -> DynamicArg:
    """Parse one ``--dynamic NAME=MIN:OPT:MAX[@INPUT.AXIS,...]`` value.

    ``batch`` without ``@`` means axis 0 of every input; any other name must list
    its axes, because guessing which axis is "sequence" would silently build the
    wrong engine profile. Input names may contain dots (``input.1``): the axis is
    the part after the last dot. ``bare_names`` allows any name without ``@``
    (``axes`` None): for an existing ONNX file, where it means the axes the model
    itself names so (the caller checks that some axis is).
    """
    raw = text.strip()
    name, sep, rest = raw.partition("=")
    name = name.strip()
    if not sep:
        raise UserInputError(f"--dynamic '{text}': missing '=' ({_DYNAMIC_USAGE})")
    if not _DIM_NAME_RE.match(name):
        raise UserInputError(
            f"--dynamic '{text}': dimension name '{name}' must be a word of letters, digits "
            f"and '_' ({_DYNAMIC_USAGE})"
        )
    bounds_text, at, axes_text = rest.partition("@")
    bounds_parts = bounds_text.split(":")
    if len(bounds_parts) != 3:
        raise UserInputError(
            f"--dynamic '{text}': bounds '{bounds_text}' must be MIN:OPT:MAX ({_DYNAMIC_USAGE})"
        )
    bounds: list[int] = []
    for label, part in zip(("MIN", "OPT", "MAX"), bounds_parts, strict=True):
        part = part.strip()
        if not _ASCII_INT.fullmatch(part) or int(part) < 1:
            raise UserInputError(
                f"--dynamic '{text}': {label} '{part}' is not a positive integer ({_DYNAMIC_USAGE})"
            )
        if int(part) > MAX_DIM:
            raise UserInputError(
                f"--dynamic '{text}': {label} {part} is above {MAX_DIM} (TensorRT profiles and ONNX Runtime "
                "shapes are 32-bit)"
            )
        bounds.append(int(part))
    low, opt, high = bounds
    if not low <= opt <= high:
        raise UserInputError(
            f"--dynamic '{text}': bounds must satisfy MIN <= OPT <= MAX, got {low}:{opt}:{high}"
        )

    axes: tuple[tuple[str, int], ...] | None = None
    if at:
        pairs: list[tuple[str, int]] = []
        for item in axes_text.split(","):
            item = item.strip()
            input_name, dot, axis_text = item.rpartition(".")
            if not dot or not input_name or not _ASCII_INT.fullmatch(axis_text):
                raise UserInputError(
                    f"--dynamic '{text}': axis '{item}' must be INPUT.AXIS with a non-negative "
                    f"integer AXIS, e.g. input_ids.1"
                )
            pair = (input_name, int(axis_text))
            if pair in pairs:
                raise UserInputError(f"--dynamic '{text}': axis '{item}' is listed twice")
            pairs.append(pair)
        axes = tuple(pairs)
    elif name != BATCH and not bare_names:
        raise UserInputError(
            f"--dynamic '{text}': say which axes '{name}' applies to, e.g. "
            f"{name}={low}:{opt}:{high}@input_ids.1,attention_mask.1 "
            f"(only '{BATCH}' defaults to axis 0 of every input)"
        )
    return DynamicArg(dim=DynamicDim(name, low, opt, high), axes=axes)


def _dtype_name(dtype: object) -> str:
    """numpy-style dtype name for a str, numpy dtype or ``torch.dtype`` (``torch.int64`` -> ``int64``)."""
    text = str(dtype).removeprefix("torch.")
    for candidate in (text, dtype):
        try:
            return str(np.dtype(candidate))  # type: ignore[call-overload]  # any dtype-like object
        except TypeError:
            continue
    return text  # e.g. bfloat16, which numpy lacks: keep torch's name


def resolve_input_specs(
    input_names: Sequence[str],
    example_shapes_dtypes: Sequence[tuple[Sequence[int], object]],
    dynamic_args: Sequence[DynamicArg],
) -> tuple[TensorSpec, ...]:
    """Combine example shapes with ``--dynamic`` declarations into input :class:`TensorSpec`.

    A dynamic axis gets the dimension's name (``str``) in place of its example
    size. Checked here, before any export: the named inputs and axes exist (the
    error lists the valid ones), no axis is claimed twice, ``batch`` without
    explicit axes only meets inputs of rank >= 1, and each example size lies in
    MIN..MAX - otherwise the exported graph would be traced at a size the engine
    profile cannot run. Dtypes may be given as strings, numpy or torch dtypes.
    """
    if len(input_names) != len(example_shapes_dtypes):
        raise UserInputError(
            f"{len(input_names)} input names ({', '.join(input_names)}) but "
            f"{len(example_shapes_dtypes)} example inputs; give one name per input"
        )
    if len(set(input_names)) != len(input_names):
        dupes = sorted({n for n in input_names if list(input_names).count(n) > 1})
        raise UserInputError(f"input names must be unique; repeated: {', '.join(dupes)}")

    shapes: dict[str, list[Dim]] = {
        name: [int(d) for d in shape]
        for name, (shape, _) in zip(input_names, example_shapes_dtypes, strict=True)
    }
    claimed: dict[tuple[str, int], str] = {}
    seen_dims: set[str] = set()
    valid_names = ", ".join(input_names) if input_names else "(none)"

    for arg in dynamic_args:
        dim = arg.dim
        where = f"--dynamic '{arg.describe()}'"
        if dim.axis_name in seen_dims:
            raise UserInputError(f"{where}: dimension '{dim.axis_name}' is declared more than once")
        seen_dims.add(dim.axis_name)

        if arg.axes is None:
            scalars = [name for name in input_names if len(shapes[name]) == 0]
            if scalars:
                raise UserInputError(
                    f"{where}: '{BATCH}' means axis 0 of every input, but {', '.join(scalars)} "
                    f"has no axes (a scalar); list the batched axes explicitly, e.g. "
                    f"{BATCH}={dim.min}:{dim.opt}:{dim.max}@{input_names[0] if input_names else 'x'}.0"
                )
            targets = [(name, 0) for name in input_names]
        else:
            targets = list(arg.axes)

        for input_name, axis in targets:
            if input_name not in shapes:
                raise UserInputError(f"{where}: no input named '{input_name}'; inputs are: {valid_names}")
            shape = shapes[input_name]
            if axis >= len(shape):
                valid_axes = f"0..{len(shape) - 1}" if shape else "none, it is a scalar"
                raise UserInputError(
                    f"{where}: input '{input_name}' has rank {len(shape)}, so axis {axis} does not "
                    f"exist (valid axes: {valid_axes})"
                )
            if (input_name, axis) in claimed:
                raise UserInputError(
                    f"{where}: axis {input_name}.{axis} is already dynamic as '{claimed[(input_name, axis)]}'"
                )
            size = shape[axis]
            assert isinstance(size, int)
            if not dim.min <= size <= dim.max:
                raise UserInputError(
                    f"{where}: the example size of {input_name}.{axis} is {size}, outside "
                    f"{dim.min}..{dim.max}; widen the range or change the example input"
                )
            claimed[(input_name, axis)] = dim.axis_name
            shape[axis] = dim.axis_name

    return tuple(
        TensorSpec(name=name, shape=tuple(shapes[name]), dtype=_dtype_name(dtype))
        for name, (_, dtype) in zip(input_names, example_shapes_dtypes, strict=True)
    )


def make_inputs(args: Sequence[InputArg], seed: int = 0) -> tuple[np.ndarray, ...]:
    """Generate one array per ``--input``, deterministically for a given ``seed``.

    Determinism matters because the same data feeds the PyTorch reference and
    every compiled artifact, and a rebuild must compare like with like. The
    distributions are described in the module docstring.
    """
    check_example_memory(args)
    rng = np.random.default_rng(seed)
    arrays: list[np.ndarray] = []
    for arg in args:
        if arg.dtype not in SUPPORTED_DTYPES:  # parse_input never makes these; guards hand-made args.
            raise UserInputError(
                f"input '{arg.name}': unsupported dtype '{arg.dtype}'; "
                f"use one of: {', '.join(SUPPORTED_DTYPES)}"
            )
        try:
            arrays.append(_random_array(rng, arg))
        except MemoryError:
            raise UserInputError(
                f"input '{arg.name}': not enough memory for an example of shape "
                f"{'x'.join(str(d) for d in arg.shape)} ({arg.dtype}); use a smaller --input shape"
            ) from None
    return tuple(arrays)


#: Largest total size of the example inputs. A build keeps several copies of them (the arrays, torch
#: tensors, golden data at other batch sizes, ONNX Runtime buffers): an example only needs a small batch.
MAX_EXAMPLE_BYTES = 1 << 30
#: Copies of the example a build holds at once, for the estimate against this machine's free memory.
EXAMPLE_COPIES = 8


def check_example_memory(args: Sequence[InputArg]) -> None:
    """Refuse example inputs whose estimated memory is absurd, before allocating anything.

    ``--input x:2147483648`` used to spend a minute and 8 GiB before failing somewhere deep.
    """
    total = 0
    for arg in args:
        itemsize = np.dtype(arg.dtype).itemsize if arg.dtype in SUPPORTED_DTYPES else 8
        total += math.prod(arg.shape) * itemsize
    need = total * EXAMPLE_COPIES
    available = _available_memory()
    if total > MAX_EXAMPLE_BYTES or (available is not None and need > available):
        shapes = ", ".join(f"{a.name}:{'x'.join(map(str, a.shape))}" for a in args)
        free = f", {available / 2**30:.1f} GiB free" if available is not None else ""
        raise UserInputError(
            f"example inputs ({shapes}) take {total / 2**20:,.0f} MiB, about {need / 2**30:,.1f} GiB during a "
            f"build (limit {MAX_EXAMPLE_BYTES >> 20} MiB of inputs{free}); an example only needs a small batch"
        )


def _available_memory() -> int | None:
    """Bytes of memory available to a new allocation on this machine, when the OS says."""
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def _random_array(rng: np.random.Generator, arg: InputArg) -> np.ndarray:
    """One array, generated in its own dtype where numpy can (no float64/int64 copy of a large input)."""
    dtype = np.dtype(arg.dtype)
    if arg.dtype == "bool":
        return rng.integers(0, 2, size=arg.shape, dtype=np.bool_)
    if _is_integer_dtype(arg.dtype):
        low, high = DEFAULT_INT_RANGE if arg.low is None or arg.high is None else (arg.low, arg.high)
        return rng.integers(int(low), int(high), size=arg.shape, dtype=dtype)
    native = dtype if dtype in (np.float32, np.float64) else np.dtype(np.float32)  # float16: via float32
    if arg.low is None or arg.high is None:
        return rng.standard_normal(size=arg.shape, dtype=native).astype(dtype, copy=False)
    weight = rng.random(size=arg.shape, dtype=native)
    array = weight * native.type(arg.high)  # LOW*(1-w) + HIGH*w: no overflow of HIGH-LOW near the dtype's max
    np.subtract(1, weight, out=weight)
    weight *= native.type(arg.low)
    array += weight
    return array.astype(dtype, copy=False)
