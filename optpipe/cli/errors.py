"""How the command line fails: one ``optpipe: error:`` line and the documented exit code, never a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from optpipe.core.errors import (
    EXIT_ENVIRONMENT,
    EXIT_GATE_FAILED,
    EXIT_OK,
    EXIT_UNJUDGED,
    EXIT_USAGE,
    OptpipeError,
    one_line,
)

F = TypeVar("F", bound=Callable[..., Any])

EXIT_CODES_HELP = f"""
\b
Exit codes:
  {EXIT_OK}  build finished and every gate passed
  {EXIT_GATE_FAILED}  a parity/accuracy gate failed (artifacts kept, report.json says which)
  {EXIT_UNJUDGED}  unjudged: no gate failed but one could not judge (too few rows); see --allow-unjudged
  {EXIT_USAGE}  usage or input error (bad model spec, shapes, weights, files)
  {EXIT_ENVIRONMENT}  environment error (missing hardware or package, or the disk filled up)
"""


def reports_errors(func: F) -> F:
    """Turn OptpipeError into one line on stderr and its exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except OptpipeError as error:
            click.echo(f"optpipe: error: {one_line(str(error))}", err=True)
            sys.exit(error.exit_code)
        except KeyboardInterrupt:
            click.echo("optpipe: interrupted; nothing was written to the output directory", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]  # functools.wraps keeps the signature


class OneLineErrors(click.Group):
    """click's usage errors (four lines: usage, hint, blank, error) as the one ``optpipe: error:`` line, exit 2."""

    def main(self, *args: Any, **kwargs: Any) -> Any:  # always non-standalone: errors are ours to print
        kwargs["standalone_mode"] = False
        try:
            return super().main(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError as error:  # plain `optpipe`: the help, not an error
            click.echo(error.ctx.get_help())
            sys.exit(EXIT_OK)
        except click.ClickException as error:
            context = getattr(error, "ctx", None)  # usage errors know their command
            where = f" (see '{context.command_path} --help')" if context is not None else ""
            message = one_line(error.format_message())
            click.echo(f"optpipe: error: {message}{where}", err=True)
            sys.exit(EXIT_USAGE)
        except click.Abort:
            click.echo("optpipe: interrupted", err=True)
            sys.exit(130)
