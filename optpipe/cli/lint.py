"""``optpipe lint FILE.onnx``: will TensorRT accept this ONNX? Checked without TensorRT or a GPU."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from optpipe.cli.errors import reports_errors
from optpipe.core.errors import (
    EXIT_GATE_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    UserInputError,
)


def _lint_profiles(model: Any, dynamics: tuple[str, ...]) -> dict[str, Any] | None:
    """``optpipe lint --dynamic`` values as profiles of ``model`` (an ``onnx.ModelProto``), checked against its inputs.

    Like the build's ``lint_profiles``: per axis name (``batch`` also covers an unnamed axis 0; a bare
    name covers the axes the model names so) and per input (full min/opt/max shapes, where every
    dynamic axis of the input has bounds), so ``NAME=...@INPUT.AXIS`` covers that axis whatever the
    exporter called it. An unknown input, an axis out of range or static, or a bare name the model
    never uses is a UserInputError listing what the model has.
    """
    from optpipe.core.tensor_spec import TensorSpec
    from optpipe.model.input_parsing import BATCH, parse_dynamic
    from optpipe.runtime.tensorrt.shape_profiles import resolve_input_shapes

    if not dynamics:
        return None
    initializers = {i.name for i in model.graph.initializer}
    shapes: dict[str, list[int | str]] = {}
    for vi in model.graph.input:
        if vi.name in initializers or not vi.type.tensor_type.HasField("shape"):
            continue  # no shape: the lint reports it (dynamic-rank)
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else d.dim_param
                           for d in vi.type.tensor_type.shape.dim]
    named = sorted({d for dims in shapes.values() for d in dims if isinstance(d, str) and d})
    explicit: dict[tuple[str, int], str] = {}
    dims = []
    for text in dynamics:
        arg = parse_dynamic(text, bare_names=True)
        dims.append(arg.dim)
        name = arg.dim.axis_name
        if arg.axes is None:
            if name != BATCH and name not in named:
                raise UserInputError(
                    f"--dynamic '{text}': the model has no axis named '{name}' (its named dynamic axes: "
                    f"{', '.join(named) or 'none'}); for an unnamed axis give it, e.g. "
                    f"{arg.describe()}@INPUT.AXIS")
            continue
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
    profiles: dict[str, Any] = {dim.axis_name: dim for dim in dims}
    for input_name, input_dims in shapes.items():
        spec = TensorSpec(input_name, tuple(explicit.get((input_name, i), d) for i, d in enumerate(input_dims)),
                          "float32")
        try:
            profiles.update(resolve_input_shapes([spec], dims))
        except UserInputError:
            continue  # an axis without bounds: the lint reports it by name, with its fix
    return profiles


LINT_EXIT_HELP = f"""
\b
Exit codes:
  {EXIT_OK}  no errors (warnings may be printed)
  {EXIT_GATE_FAILED}  errors: TensorRT is expected to reject the model
  {EXIT_USAGE}  the file is missing or not readable ONNX, or a bad option
"""


@click.command(name="lint", epilog=LINT_EXIT_HELP)
@click.argument("onnx_file", type=click.Path(path_type=Path))
@click.option("--target", default="tensorrt", show_default=True, type=click.Choice(["tensorrt"]),
              help="Runtime whose ONNX support to check against.")
@click.option("--dynamic", "dynamics", multiple=True, metavar="NAME=MIN:OPT:MAX[@INPUT.AXIS,...]",
              help="Optimization profile of a dynamic axis, by its ONNX name (batch=1:8:32 also covers an "
              "unnamed axis 0) or by input and axis (seq=1:32:128@input_ids.1). Without one, every dynamic "
              "axis is reported.")
@click.option("--json", "as_json", is_flag=True, help="Print the problems as JSON.")
@reports_errors
def lint(onnx_file: Path, target: str, dynamics: tuple[str, ...], as_json: bool) -> None:
    """Check ONNX_FILE against TensorRT's documented ONNX support, without TensorRT or a GPU.

    Prints each problem with its node, what is wrong and how to fix it.
    """
    import json

    from optpipe.runtime.tensorrt.lint import _load as load_onnx
    from optpipe.runtime.tensorrt.lint import has_errors, lint_model

    model = load_onnx(onnx_file)
    problems = lint_model(model, profiles=_lint_profiles(model, dynamics))
    problems.sort(key=lambda p: p.severity != "error")
    if as_json:
        click.echo(json.dumps([p.to_dict() for p in problems], indent=2))
    else:
        for problem in problems:
            click.echo(f"{problem.severity}: {problem.code} at {problem.node or '(model)'}")
            click.echo(f"    {problem.message}")
            click.echo(f"    fix: {problem.fix}")
        errors = sum(p.severity == "error" for p in problems)
        click.echo(f"{onnx_file}: {errors} error(s), {len(problems) - errors} warning(s) for {target}")
    sys.exit(EXIT_GATE_FAILED if has_errors(problems) else EXIT_OK)
