"""``optpipe inspect FILE.onnx``: an ONNX file's interface, opsets, ops and size."""

from __future__ import annotations

from pathlib import Path

import click

from optpipe.cli.errors import reports_errors


@click.command()
@click.argument("onnx_file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@reports_errors
def inspect(onnx_file: Path, as_json: bool) -> None:
    """Show an ONNX file's inputs, outputs, opsets, op histogram, domains and size."""
    import json

    from optpipe.onnx.inspect import format_inspection, inspect_onnx

    info = inspect_onnx(onnx_file)
    click.echo(json.dumps(info, indent=2, default=str) if as_json else format_inspection(info))
