"""A private working directory for third-party code that writes into the current one.

ONNX Runtime's quantization tools write files relative to the process's
working directory: when symbolic shape inference fails it saves
``sym_shape_infer_temp.onnx`` and a copy of every weight (``<uuid>.data``)
there and raises, leaving gigabytes in the user's directory on every
quantization round. Library code that can do this runs inside
:func:`scratch_cwd`, which switches into a temporary directory that is removed
afterwards whatever the library did. The working directory is process-wide,
so the switch is serialised by a lock; callers must pass absolute paths.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_CWD_LOCK = threading.RLock()


@contextmanager
def scratch_cwd(prefix: str = "optpipe-scratch-") -> Iterator[Path]:
    """Run the body with a fresh temporary directory as the working directory, then remove it.

    Re-entrant (a nested call gets its own directory); the previous working
    directory is restored even when the body raises.
    """
    with _CWD_LOCK, tempfile.TemporaryDirectory(prefix=prefix) as scratch:
        previous = os.getcwd()
        os.chdir(scratch)
        try:
            yield Path(scratch)
        finally:
            os.chdir(previous)
