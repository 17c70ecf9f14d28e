"""Third-party log lines go to ``DIR/build.log``; the console keeps optpipe's own lines.

ONNX Runtime's quantizer logs ``Axis 1 is out-of-range for weight ...`` through
the *root* logger on every per-channel call on a transformer (hundreds of lines
per guard round), and onnxscript, torch.onnx and transformers add their own.
They are evidence worth keeping, not console output: while a build runs, the
root logger and those libraries' loggers (and Python warnings) write to the
build directory's ``build.log`` only, and are restored afterwards.
"""

from __future__ import annotations

import logging
from pathlib import Path

#: Loggers of the libraries a build drives (their children included).
THIRD_PARTY = ("onnxruntime", "onnxscript", "onnx_ir", "torch.onnx", "torch.export", "torch._dynamo", "transformers")


class LogCapture:
    """Route the root and third-party loggers to one file between :meth:`start` and :meth:`stop`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._handler: logging.Handler | None = None
        self._saved: dict[str, tuple[list[logging.Handler], bool]] = {}
        self._captured_warnings = False

    def start(self) -> LogCapture:
        handler = logging.FileHandler(self.path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self._handler = handler
        for name in ("", *THIRD_PARTY, "py.warnings"):
            logger = logging.getLogger(name)
            self._saved[name] = (logger.handlers[:], logger.propagate)
            logger.handlers = [handler]
            logger.propagate = False
        logging.captureWarnings(True)
        self._captured_warnings = True
        return self

    def stop(self) -> None:
        """Restore every logger as it was and close the file (idempotent)."""
        if self._handler is None:
            return
        for name, (handlers, propagate) in self._saved.items():
            logger = logging.getLogger(name)
            logger.handlers = handlers
            logger.propagate = propagate
        if self._captured_warnings:
            logging.captureWarnings(False)
        self._handler.close()
        self._handler = None
