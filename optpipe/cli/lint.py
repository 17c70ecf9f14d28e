"""``optpipe lint FILE.onnx``: will TensorRT accept this ONNX? Checked without TensorRT or a GPU."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from optpipe.cli.errors import reports_errors
from optpipe.core.errors import (
    EXIT_GATE_FAILED,
    EXIT_OK,
    EXIT_USAGE,
)

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

    from optpipe.model.input_parsing import parse_dynamic
    from optpipe.runtime.tensorrt.lint import _load as load_onnx
    from optpipe.runtime.tensorrt.lint import has_errors, lint_model
    from optpipe.runtime.tensorrt.shape_profiles import shape_profiles_for_lint

    model = load_onnx(onnx_file)
    shape_profiles = shape_profiles_for_lint(model, dynamics, lambda text: parse_dynamic(text, bare_names=True))
    problems = lint_model(model, shape_profiles=shape_profiles)
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
