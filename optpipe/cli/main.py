"""The ``optpipe`` command line: a thin click layer over the library.

Each command parses its options, calls the library, prints the result, and
exits with the code the library decided. Errors a user can cause arrive as
:class:`~optpipe.core.errors.OptpipeError` and are printed as one line (no
traceback) with their exit code. torch is never imported at module level, so
``optpipe --help`` works without it.
"""

from __future__ import annotations

from pathlib import Path

import click

from optpipe.cli.build import build
from optpipe.cli.cache import cache_group
from optpipe.cli.engine import engine
from optpipe.cli.errors import EXIT_CODES_HELP, OneLineErrors
from optpipe.cli.inspect import inspect
from optpipe.cli.lint import lint
from optpipe.cli.options import writable_file
from optpipe.cli.passes import list_passes
from optpipe.cli.profile import profile_command
from optpipe.cli.sweep import sweep
from optpipe.cli.verify import verify
from optpipe.core.version import __version__


def _log_file(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """``--log-file``: refused before any work when it cannot be written."""
    return writable_file(ctx, param, value)


@click.group(cls=OneLineErrors, help="optpipe compiles trained PyTorch models into fast, verified runtime artifacts.\n"
             + EXIT_CODES_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="optpipe")
@click.option("-v", "--verbose", count=True, help="More messages (-v: debug).")
@click.option("-q", "--quiet", count=True, help="Fewer messages (-q: warnings and results only, -qq: errors).")
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE", callback=_log_file,
              help="Also write every message, with timestamps, to FILE.")
def main(verbose: int, quiet: int, log_file: Path | None) -> None:
    """Entry point of the ``optpipe`` command."""
    from optpipe.core.console import configure_cli_logging

    configure_cli_logging(verbose - quiet, log_file)


for _command in (build, cache_group, engine, inspect, lint, list_passes, profile_command, sweep, verify):
    main.add_command(_command)
