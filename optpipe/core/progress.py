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


class Elapsed:
    """``with Elapsed("export"):`` redraws ``export ... 12s`` every half second for a step with no count.

    For the single long calls (the ONNX export) where no done/total exists: the
    ticker only says the build is alive. Same rules as :class:`Progress`: only
    on a terminal, never with ``OPTPIPE_NO_PROGRESS``, line erased at the end.
    """

    def __init__(self, label: str, stream: TextIO | None = None, interval_s: float = 0.5) -> None:
        import threading

        self.progress = Progress(label, 1, stream)
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, name="optpipe-elapsed", daemon=True)

    def _tick(self) -> None:
        import time

        start = time.monotonic()
        while not self._stop.wait(self.interval_s):
            self.progress.stream.write(f"\r     {self.progress.label} ... {time.monotonic() - start:.0f}s")
            self.progress.stream.flush()
            self.progress.drawn = True

    def __enter__(self) -> Elapsed:
        if self.progress.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()
        self.progress.close()
