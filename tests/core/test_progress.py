"""Progress indicators: drawn only on a terminal, never with OPTPIPE_NO_PROGRESS, erased at the end."""

from __future__ import annotations

import io
import time

import pytest

from optpipe.core.progress import Elapsed, Progress


class Terminal(io.StringIO):
    """A text stream that says it is a terminal (what a person's stderr is)."""

    def isatty(self) -> bool:
        return True


def test_elapsed_ticks_on_a_terminal_and_erases_its_line() -> None:
    stream = Terminal()
    with Elapsed("export (dynamo)", stream=stream, interval_s=0.01):
        time.sleep(0.1)
    text = stream.getvalue()
    assert "\r     export (dynamo) ... 0s" in text
    assert text.endswith("\r\x1b[K")


def test_elapsed_is_silent_off_a_terminal_and_with_no_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = io.StringIO()
    with Elapsed("export", stream=plain, interval_s=0.01):
        time.sleep(0.05)
    assert plain.getvalue() == ""
    monkeypatch.setenv("OPTPIPE_NO_PROGRESS", "1")
    terminal = Terminal()
    with Elapsed("export", stream=terminal, interval_s=0.01):
        time.sleep(0.05)
    assert terminal.getvalue() == ""


def test_counted_progress_bar_draws_and_erases() -> None:
    stream = Terminal()
    progress = Progress("validate", 4, stream=stream)
    progress.update(0)
    progress.update(2)
    progress.close()
    text = stream.getvalue()
    assert "validate [......" in text and "2/4" in text and text.endswith("\r\x1b[K")
