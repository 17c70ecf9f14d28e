"""Where optpipe's messages go: the library logs, the command line decides what is shown.

The library never prints. Progress and warnings go to the ``optpipe`` logger
(:func:`info` is the default ``log`` of :func:`optpipe.build`), which has only
a ``NullHandler``: an MLOps job that calls ``optpipe.build()`` sees nothing
unless it configures logging (``logging.basicConfig(level=logging.INFO)``).
The ``optpipe`` command attaches a console handler (stderr, so stdout holds
only results: the summary or ``--json``), set by ``-q``/``-v``, and with
``--log-file FILE`` a file handler with timestamps at debug level.

Colour: PASS/FAIL words are highlighted only when stdout is a terminal
(click strips styles otherwise) and never when ``NO_COLOR`` is set
(https://no-color.org).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import click

LOGGER = logging.getLogger("optpipe")
LOGGER.addHandler(logging.NullHandler())
_CLI_HANDLER = "optpipe-cli"


def info(message: str) -> None:
    """The library's progress line (a ``log`` callable for build/finish)."""
    LOGGER.info(message)


class _ClickHandler(logging.Handler):
    """Writes through ``click.echo(err=True)``, which finds the current stderr at each call."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            click.echo(self.format(record), err=True, color=use_color())
        except Exception:  # logging must never break the build
            self.handleError(record)


def configure_cli_logging(verbosity: int = 0, log_file: Path | None = None) -> None:
    """Console handler at INFO (``-q``: WARNING, ``-qq``: ERROR, ``-v``: DEBUG) and an optional debug log file.

    Replaces the handlers a previous call attached, so repeated invocations in
    one process (tests, notebooks) do not print twice.
    """
    for handler in list(LOGGER.handlers):
        if getattr(handler, "name", None) == _CLI_HANDLER:
            LOGGER.removeHandler(handler)
            handler.close()
    level = {-2: logging.ERROR, -1: logging.WARNING, 0: logging.INFO}.get(max(verbosity, -2), logging.DEBUG)
    console = _ClickHandler(level)
    console.name = _CLI_HANDLER
    console.setFormatter(logging.Formatter("%(message)s"))
    LOGGER.addHandler(console)
    if log_file is not None:  # opened at the first record; a write that fails is one warning, not a traceback
        from optpipe.core.safe_output import SafeLogHandler

        file_handler = SafeLogHandler(log_file, warn=console)
        file_handler.name = _CLI_HANDLER
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        LOGGER.addHandler(file_handler)
    LOGGER.setLevel(logging.DEBUG if log_file is not None else level)
    LOGGER.propagate = False  # the root logger of an embedding application must not print it again


def use_color() -> bool | None:
    """False under ``NO_COLOR``; else None: click colours only when the stream is a terminal."""
    return False if os.environ.get("NO_COLOR") else None


_VERDICTS = re.compile(r"\b(PASSED|FAILED|FAIL|pass|reject)\b")
_STYLES = {"PASSED": ("green", True), "pass": ("green", False), "FAILED": ("red", True), "FAIL": ("red", True),
           "reject": ("yellow", False)}


def highlight(text: str) -> str:
    """PASS/FAIL words in the summary styled (stripped again by click.echo when not on a terminal)."""
    def style(match: re.Match[str]) -> str:
        color, bold = _STYLES[match.group(1)]
        return click.style(match.group(1), fg=color, bold=bold)

    return _VERDICTS.sub(style, text)


def echo_result(text: str) -> None:
    """A result on stdout: the summary with its verdicts highlighted where colour is allowed."""
    click.echo(highlight(text), color=use_color())
