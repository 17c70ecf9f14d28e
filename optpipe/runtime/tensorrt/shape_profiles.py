"""Shape profiles (TensorRT optimization profiles): turning named dynamic axes into min/opt/max shapes.

TensorRT needs, for every input with a dynamic dimension, a concrete
(min, opt, max) shape triple in an optimization profile; a missing one is a
build-time failure on the GPU machine, long after the CPU stages finished. This
module resolves shape profiles from optpipe's :class:`~optpipe.core.tensor_spec.DynamicDim`
list on the CPU, so both the lint and the engine builder share one rule and the
error appears before any GPU is involved.

Profiles are accepted in two forms:

* a sequence of :class:`DynamicDim`, one per named axis (``"batch"`` also covers
  an anonymous axis 0 of every input, as documented on ``DynamicDim``);
* a ``dict`` whose keys are either axis names (values: ``DynamicDim`` or a
  ``(min, opt, max)`` int triple) or input names (values: three full shapes,
  Polygraphy ``Profile.add(name, min, opt, max)`` style).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from optpipe.core.errors import UserInputError
from optpipe.core.tensor_spec import Dim, DynamicDim, TensorSpec
from optpipe.onnx.shapes import graph_inputs

Shape = tuple[int, ...]
ShapeProfilesArg = Sequence[DynamicDim] | Mapping[str, object] | None

BATCH_AXIS = "batch"


@dataclass(frozen=True)
class NormalizedShapeProfiles:
    """Profiles split by how they are keyed: per named axis, or per input (full shapes)."""

    axes: dict[str, tuple[int, int, int]]
    inputs: dict[str, tuple[Shape, Shape, Shape]]

    def covers(self, input_name: str, axis_index: int, dim_param: str | None) -> bool:
        """Whether a dynamic dimension has bounds from some profile entry."""
        if input_name in self.inputs:
            return True
        if dim_param and dim_param in self.axes:
            return True
        return axis_index == 0 and BATCH_AXIS in self.axes and not dim_param


def _int_triple(name: str, value: object) -> tuple[int, int, int]:
    if isinstance(value, DynamicDim):
        triple = (value.min, value.opt, value.max)
    elif isinstance(value, Sequence) and len(value) == 3 and all(isinstance(v, int) for v in value):
        triple = (int(value[0]), int(value[1]), int(value[2]))
    else:
        raise UserInputError(f"profile for axis '{name}' must be (min, opt, max) integers, got {value!r}")
    return triple


def _shape_triple(name: str, value: object) -> tuple[Shape, Shape, Shape]:
    if not (isinstance(value, Sequence) and len(value) == 3):
        raise UserInputError(
            f"profile for input '{name}' must be three shapes (min, opt, max), got {value!r}"
        )
    shapes = []
    for shape in value:
        if not (isinstance(shape, Sequence) and all(isinstance(d, int) for d in shape)):
            raise UserInputError(f"profile for input '{name}' has a non-integer shape: {shape!r}")
        shapes.append(tuple(int(d) for d in shape))
    if len({len(s) for s in shapes}) != 1:
        raise UserInputError(f"profile for input '{name}': min/opt/max shapes have different ranks")
    return shapes[0], shapes[1], shapes[2]


def validate_bounds(label: str, low: int, opt: int, high: int) -> list[str]:
    """Reasons a min/opt/max triple is unusable (TensorRT requires 1 <= min <= opt <= max)."""
    reasons = []
    if low < 0:
        reasons.append(f"{label}: min {low} is negative")
    if not low <= opt <= high:
        reasons.append(f"{label}: needs min <= opt <= max, got {low}/{opt}/{high}")
    return reasons


def normalize_shape_profiles(shape_profiles: ShapeProfilesArg) -> NormalizedShapeProfiles:
    """Bring every accepted profile form into :class:`NormalizedShapeProfiles` (raises UserInputError)."""
    axes: dict[str, tuple[int, int, int]] = {}
    inputs: dict[str, tuple[Shape, Shape, Shape]] = {}
    if shape_profiles is None:
        return NormalizedShapeProfiles(axes, inputs)
    if isinstance(shape_profiles, Mapping):
        for key, value in shape_profiles.items():
            key = str(key)
            is_shapes = (
                isinstance(value, Sequence)
                and len(value) == 3
                and all(isinstance(v, Sequence) for v in value)
            )
            if is_shapes:
                inputs[key] = _shape_triple(key, value)
            else:
                axes[key] = _int_triple(key, value)
    else:
        for dim in shape_profiles:
            if not isinstance(dim, DynamicDim):
                raise UserInputError(f"profiles must be DynamicDim entries, got {dim!r}")
            axes[dim.axis_name] = (dim.min, dim.opt, dim.max)
    problems = [r for name, t in axes.items() for r in validate_bounds(f"axis '{name}'", *t)]
    for name, (lo, op, hi) in inputs.items():
        for i, (a, b, c) in enumerate(zip(lo, op, hi, strict=True)):
            problems += validate_bounds(f"input '{name}' axis {i}", a, b, c)
    if problems:
        raise UserInputError("invalid optimization profile: " + "; ".join(problems))
    return NormalizedShapeProfiles(axes, inputs)


def resolve_input_shapes(
    input_specs: Sequence[TensorSpec], shape_profiles: ShapeProfilesArg
) -> dict[str, tuple[Shape, Shape, Shape]]:
    """Concrete (min, opt, max) shapes for every input, as Polygraphy's ``Profile.add`` wants.

    Static inputs get the same shape three times, so the profile is complete.
    Raises UserInputError naming the input and axis when a dynamic axis has no bounds.
    """
    norm = normalize_shape_profiles(shape_profiles)
    result: dict[str, tuple[Shape, Shape, Shape]] = {}
    for spec in input_specs:
        if spec.name in norm.inputs:
            result[spec.name] = norm.inputs[spec.name]
            continue
        mins: list[int] = []
        opts: list[int] = []
        maxs: list[int] = []
        for index, dim in enumerate(spec.shape):
            triple = _dim_bounds(spec.name, index, dim, norm)
            mins.append(triple[0])
            opts.append(triple[1])
            maxs.append(triple[2])
        result[spec.name] = (tuple(mins), tuple(opts), tuple(maxs))
    return result


def _dim_bounds(input_name: str, index: int, dim: Dim, norm: NormalizedShapeProfiles) -> tuple[int, int, int]:
    if isinstance(dim, int) and dim >= 0:
        return (dim, dim, dim)
    name = dim if isinstance(dim, str) and dim else None
    if name is not None and name in norm.axes:
        return norm.axes[name]
    if index == 0 and BATCH_AXIS in norm.axes and name is None:
        return norm.axes[BATCH_AXIS]
    label = f"'{name}'" if name else "(unnamed)"
    raise UserInputError(
        f"input '{input_name}' axis {index} is dynamic {label} but no optimization profile gives its "
        f"min/opt/max; add one, e.g. DynamicDim('{name or BATCH_AXIS}', 1, 8, 32)"
    )


class ParsedDynamic(Protocol):
    """One parsed ``--dynamic`` option (``optpipe.model.input_parsing.DynamicArg``, a layer above)."""

    @property
    def dim(self) -> DynamicDim: ...

    @property
    def axes(self) -> tuple[tuple[str, int], ...] | None: ...

    def describe(self) -> str: ...


def shape_profiles_for_lint(
    model: Any, dynamics: Sequence[str], parse: Callable[[str], ParsedDynamic]
) -> dict[str, Any] | None:
    """``optpipe lint --dynamic`` values (parsed by ``parse``) as shape profiles of ``model`` (an ``onnx.ModelProto``).

    ``parse`` is the CLI's ``--dynamic`` parser, which lives in a layer above this one; each value is
    parsed and checked in turn, so the first bad value is the one reported.
    Like the build's ``optpipe.passes.trt_lint.lint_shape_profiles``: per axis name (``batch`` also
    covers an unnamed axis 0; a bare name covers the axes the model names so) and per input (full
    min/opt/max shapes, where every dynamic axis of the input has bounds), so ``NAME=...@INPUT.AXIS``
    covers that axis whatever the exporter called it. An unknown input, an axis out of range or static,
    or a bare name the model never uses is a UserInputError listing what the model has.
    """
    if not dynamics:
        return None
    shapes = _declared_shapes(model)
    named = sorted({d for dims in shapes.values() for d in dims if isinstance(d, str) and d})
    explicit: dict[tuple[str, int], str] = {}
    dims = []
    for text in dynamics:
        arg = parse(text)
        dims.append(arg.dim)
        explicit.update(_explicit_axes(text, arg, shapes, named))
    shape_profiles: dict[str, Any] = {dim.axis_name: dim for dim in dims}
    for input_name, input_dims in shapes.items():
        spec = TensorSpec(input_name, tuple(explicit.get((input_name, i), d) for i, d in enumerate(input_dims)),
                          "float32")
        try:
            shape_profiles.update(resolve_input_shapes([spec], dims))
        except UserInputError:
            continue  # an axis without bounds: the lint reports it by name, with its fix
    return shape_profiles


def _declared_shapes(model: Any) -> dict[str, list[int | str]]:
    """Each shaped input's dims: a positive size, else the axis name ('' when unnamed).

    An input without a shape is left out: the lint reports it (dynamic-rank).
    """
    return {
        value.name: [d if isinstance(d, int) and d > 0 else (d if isinstance(d, str) else "") for d in value.shape]
        for value in graph_inputs(model.graph)
        if value.shape is not None
    }


def _explicit_axes(
    text: str, arg: ParsedDynamic, shapes: Mapping[str, list[int | str]], named: list[str]
) -> dict[tuple[str, int], str]:
    """The ``(input, axis)`` pairs ``arg`` (written ``text``) names, checked against the model's inputs."""
    name = arg.dim.axis_name
    if arg.axes is None:
        if name != BATCH_AXIS and name not in named:
            raise UserInputError(
                f"--dynamic '{text}': the model has no axis named '{name}' (its named dynamic axes: "
                f"{', '.join(named) or 'none'}); for an unnamed axis give it, e.g. "
                f"{arg.describe()}@INPUT.AXIS")
        return {}
    explicit: dict[tuple[str, int], str] = {}
    for input_name, axis in arg.axes:
        if input_name not in shapes:
            raise UserInputError(f"--dynamic '{text}': the model has no input '{input_name}'; its inputs "
                                 f"are: {', '.join(shapes) or 'none'}")
        rank = len(shapes[input_name])
        dynamic_axes = [str(i) for i, d in enumerate(shapes[input_name]) if isinstance(d, str)]
        if axis >= rank or not isinstance(shapes[input_name][axis], str):
            what = (f"input '{input_name}' has rank {rank}" if axis >= rank
                    else f"axis {axis} of input '{input_name}' is static ({shapes[input_name][axis]})")
            raise UserInputError(f"--dynamic '{text}': {what}; its dynamic axes are: "
                                 f"{', '.join(dynamic_axes) or 'none'}")
        explicit[(input_name, axis)] = name
    return explicit
