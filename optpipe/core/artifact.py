"""The values that flow between passes.

An :class:`Artifact` is a file on disk plus what a later pass needs to know
about it without opening it: its kind (so the pipeline can check that one pass
feeds the next before a long build starts), its content hash (for caching and
the manifest), its input/output specs and its precision.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path

from optpipe.core.tensor_spec import TensorSpec


class ArtifactKind(str, Enum):
    """What an artifact is; passes declare which kind they take and make."""

    TORCH = "torch"  # an in-memory nn.Module (path is None)
    ONNX = "onnx"  # a portable ONNX file
    ENGINE = "engine"  # a runtime-specific file (ONNX Runtime optimized model, TensorRT plan)


@dataclass(frozen=True)
class Artifact:
    """An immutable description of one intermediate or final build product."""

    kind: ArtifactKind
    path: Path | None
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    precision: str = "fp32"
    producer: str = ""
    extra: dict[str, object] = field(default_factory=dict, compare=False, hash=False)

    def derive(self, **changes: object) -> Artifact:
        """Copy with some fields changed (artifacts are never mutated)."""
        return replace(self, **changes)  # type: ignore[arg-type]  # dataclasses.replace is untyped kwargs

    def to_dict(self, relative_to: Path | None = None) -> dict[str, object]:
        path: str | None = None
        if self.path is not None:
            path = str(self.path.relative_to(relative_to) if relative_to else self.path)
        return {
            "kind": self.kind.value,
            "path": path,
            "sha256": self.sha256,
            "precision": self.precision,
            "producer": self.producer,
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": [s.to_dict() for s in self.outputs],
        }


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hash a file in chunks (ONNX files with external data and TensorRT plans can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_files(paths: list[Path]) -> str:
    """One hash over several files (an ONNX file plus its external data)."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it into place on success.

    A crash or exception leaves no file at ``final`` that could be mistaken for
    a complete artifact, only a ``.tmp-*`` file that is removed here.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".tmp-{final.name}-", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~umask_value())  # mkstemp makes 0600 files; artifacts get normal permissions
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def unwritable_reason(path: Path) -> str | None:
    """Why the file ``path`` could not be written (atomically, as :func:`atomic_path` does), or None.

    Checked before long work so that a bad destination fails in a second, not
    after the build: ``path`` must not be a directory, its nearest existing
    ancestor must be a directory (missing ones are created) that this process can write.
    """
    path = Path(path)
    if path.is_dir():
        return f"'{path}' is a directory"
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"'{ancestor}' is a file, not a directory"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"directory '{ancestor}' is not writable"
    return None


def umask_value() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_bytes_atomic(final: str | Path, data: bytes) -> None:
    """Write ``data`` to ``final`` through a temporary file and a rename (flushed to disk first)."""
    with atomic_path(Path(final)) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
