"""A one-line progress bar on stderr, drawn only when stderr is a terminal.

Benchmarking and validation loops can take tens of seconds on a big model;
a bar tells a person at a terminal that the build is alive. In CI logs,
pipes and tests (stderr not a TTY) nothing is written, so logs stay clean and
``--json`` output is never mixed with control characters. Set
``OPTPIPE_NO_PROGRESS=1`` to turn it off at a terminal too.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO


class Progress:
    """``update(done)`` redraws ``label [#####.....] done/total``; ``close()`` erases the line."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None, width: int = 24) -> None:
        self.label = label
        self.total = max(1, total)
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.drawn = False
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = bool(isatty and isatty()) and not os.environ.get("OPTPIPE_NO_PROGRESS")

    def update(self, done: int, total: int | None = None) -> None:
        if not self.enabled:
            return
        total = max(1, total or self.total)
        filled = int(self.width * min(done, total) / total)
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r     {self.label} [{bar}] {done}/{total}")
        self.stream.flush()
        self.drawn = True
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.drawn = False
