"""An ONNX file's outputs on the golden cases, computed once per build for the file as it is on disk.

Why: the export pass runs the exported model on every golden case (its check against PyTorch), and the
simplify pass ran the same file again on the same cases to compare its result with: a second session and
inference of the whole model (BERT-base: ~6 s of a 4-minute build; the 2.4 GB model: a minute). Both run
ONNX Runtime at its basic level with the build's threads, so the values are the same; they are kept in the
build's shared memo under the file's identity (path, inode, size, modification time of the model and its
data files), which any rewrite of the file changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from optpipe.onnx.utils import onnx_files

Outputs = list[dict[str, np.ndarray]]


def _key(path: Path, threads: int | None) -> tuple[Any, ...]:
    identity = []
    for file in onnx_files(Path(path)):
        stat = file.stat()
        identity.append((str(file.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns))
    return ("onnx-outputs-basic", tuple(identity), threads)


def remember(memo: dict[Any, Any], path: Path, threads: int | None, outputs: Outputs) -> None:
    """Keep ``outputs`` (one dict per golden case, in order) of the file at ``path``."""
    memo[_key(path, threads)] = outputs


def recall(memo: dict[Any, Any], path: Path, threads: int | None) -> Outputs | None:
    """The outputs remembered for the file at ``path`` as it is now, or None."""
    found = memo.get(_key(path, threads))
    return list(found) if found is not None else None
