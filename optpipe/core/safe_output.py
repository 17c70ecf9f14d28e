"""The one writer for every path a user names as an output (``--junit``, ``--log-file``, ``--calib-cache``...).

Why one writer: each output option used to write to a temporary name and rename it over the
target, which *replaces* whatever was there: ``--junit /dev/null`` run as root turned the system's
``/dev/null`` into a regular file, and ``--junit /dev/stdout`` replaced the symlink. Here:

* a path is resolved first, so a symlink is written *through* (the link stays a link);
* a character device or a FIFO is written *to*, never replaced (``/dev/stdout``, a pipe to ``tee``);
  a FIFO is opened without blocking and waited for a bounded time (:data:`FIFO_WAIT_SECONDS`),
  so a FIFO nobody reads is one error, not a hang;
* any other special file (a socket, a block device) is refused in one line;
* a regular file (or a missing one) gets the atomic temporary-name-then-rename, at the resolved path;
* missing parent directories are created.

:func:`output_refusal` is the check before any work: an output path must not be an input of the
build (the model file, weights, data, config), nor lie inside the ``--out`` being built (the
publish replaces that directory) or the cache directory.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import select
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from optpipe.core.artifact import unwritable_reason, write_bytes_atomic
from optpipe.core.errors import UserInputError

#: Longest wait for a reader (writing) or a writer (reading) at the other end of a FIFO.
FIFO_WAIT_SECONDS = 5.0


def _mode(path: Path) -> int | None:
    try:
        return os.stat(path).st_mode
    except OSError:
        return None


def _is_stream(mode: int | None) -> bool:
    """A character device or a FIFO: written to in place, never replaced."""
    return mode is not None and (stat.S_ISCHR(mode) or stat.S_ISFIFO(mode))


def resolved(path: str | Path) -> Path:
    """``path`` with every symlink and ``..`` resolved (path identity, not spelling)."""
    return Path(os.path.realpath(Path(path).expanduser()))


def _inside(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents


@dataclass(frozen=True)
class OutputGuard:
    """What a user-named output path must not be: the build's inputs, its ``--out``, the cache."""

    inputs: tuple[Path, ...] = ()
    out_dirs: tuple[Path, ...] = ()
    cache_dir: Path | None = None

    @classmethod
    def of(cls, inputs: Iterable[str | Path | None] = (), out_dirs: Iterable[str | Path | None] = (),
           cache_dir: str | Path | None = None) -> OutputGuard:
        """A guard from whatever the caller has (``None`` entries are skipped)."""
        return cls(tuple(resolved(p) for p in inputs if p), tuple(resolved(p) for p in out_dirs if p),
                   resolved(cache_dir) if cache_dir else None)


def output_refusal(path: str | Path, guard: OutputGuard = OutputGuard()) -> str | None:
    """Why ``path`` may not be written as a user-named output file, or None; checked before any work."""
    target = resolved(path)
    reason = guard_refusal(target, guard)
    if reason:
        return reason
    mode = _mode(target)
    if mode is not None and not stat.S_ISREG(mode) and not _is_stream(mode):
        if stat.S_ISDIR(mode):
            return f"'{target}' is a directory"
        return f"'{target}' is a special file (not a regular file, character device or FIFO)"
    if _is_stream(mode):
        return None if os.access(target, os.W_OK) else f"'{target}' is not writable"
    return unwritable_reason(target)


def guard_refusal(path: str | Path, guard: OutputGuard) -> str | None:
    """Why writing at ``path`` (a file, or a directory such as MLflow's local store) would hit the guard."""
    target = resolved(path)
    for source in guard.inputs:
        if target == source:
            return f"it is an input of this build ({source}); writing it would destroy it"
    for out in guard.out_dirs:
        if _inside(target, out):
            return f"it is inside the output directory {out}, which the build creates or replaces"
    if guard.cache_dir is not None and _inside(target, guard.cache_dir):
        return f"it is inside the cache directory {guard.cache_dir}, which optpipe manages"
    return None


class OutputRefused(UserInputError):
    """A user-named output path refused before any work (no error file may be written there either)."""


def check_output(path: str | Path | None, option: str, guard: OutputGuard = OutputGuard()) -> None:
    """:func:`output_refusal` as a one-line UserInputError (exit 2) naming the option."""
    if path is None:
        return
    reason = output_refusal(path, guard)
    if reason:
        raise OutputRefused(f"{option} {path}: cannot write it: {reason}")


def _open_stream(target: Path, flags: int, timeout: float | None) -> int:
    """Open a FIFO/char device without blocking for longer than ``timeout`` (ENXIO: no reader yet)."""
    timeout = FIFO_WAIT_SECONDS if timeout is None else timeout
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(target, flags | os.O_NONBLOCK | os.O_NOCTTY)
        except OSError as error:
            if error.errno != errno.ENXIO or time.monotonic() >= deadline:
                if error.errno == errno.ENXIO:
                    raise OSError(errno.ENXIO, f"no process reads the FIFO (waited {timeout:g} s)") from None
                raise
            time.sleep(0.05)
            continue
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)  # writes block normally
        return fd


def open_output(path: str | Path, *, append: bool = False, timeout: float | None = None) -> int:
    """A write descriptor on ``path`` for streaming (a log): through symlinks, to devices, parents created.

    Raises OSError (its ``strerror`` is one readable clause).
    """
    target = resolved(path)
    if _is_stream(_mode(target)):
        return _open_stream(target, os.O_WRONLY, timeout)
    target.parent.mkdir(parents=True, exist_ok=True)
    return os.open(target, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC), 0o666)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_output(path: str | Path, data: bytes, *, timeout: float | None = None) -> None:
    """Write a whole user-named output file: atomically for a regular file, in place for a device or FIFO.

    Never replaces a symlink, device or FIFO. Raises OSError (ENOSPC on a full disk, ENXIO for a
    FIFO nobody reads); the caller turns it into one line.
    """
    target = resolved(path)
    if _is_stream(_mode(target)):
        fd = _open_stream(target, os.O_WRONLY, timeout)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        return
    write_bytes_atomic(target, data)


def read_input_bytes(path: str | Path, what: str, *, timeout: float | None = None) -> bytes:
    """Read a user-named input file; a FIFO (``-c <(...)``) is waited for at most ``timeout`` seconds.

    Raises UserInputError (exit 2) for a missing file, a directory, a special file or a FIFO no
    process writes to.
    """
    target = resolved(path)
    mode = _mode(target)
    if mode is None:
        raise UserInputError(f"{path}: no such {what}")
    if stat.S_ISREG(mode):
        try:
            return target.read_bytes()
        except OSError as error:
            raise UserInputError(f"{path}: cannot read the {what} ({error.strerror or error})") from None
    if not stat.S_ISFIFO(mode):
        raise UserInputError(f"{path}: the {what} is not a regular file")
    timeout = FIFO_WAIT_SECONDS if timeout is None else timeout
    fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK)
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            raise UserInputError(f"{path}: no process writes to this FIFO (waited {timeout:g} s for the {what})")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


class SafeLogHandler(logging.Handler):
    """``--log-file``: opened at the first record, written through :func:`open_output`.

    A log never fails a build: a file that cannot be opened or written (a full disk, ``/dev/full``,
    a FIFO nobody reads) gives one warning through ``warn`` and the handler stops, instead of
    Python's ``--- Logging error ---`` traceback per record.
    """

    def __init__(self, path: Path, warn: logging.Handler) -> None:
        super().__init__(logging.DEBUG)
        self.path = path
        self._warn = warn
        self._fd: int | None = None
        self._failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if self._failed:
            return
        try:
            if self._fd is None:
                self._fd = open_output(self.path, append=True)
            _write_all(self._fd, (self.format(record) + "\n").encode("utf-8", "replace"))
        except (OSError, ValueError) as error:
            self._failed = True
            reason = getattr(error, "strerror", None) or str(error)
            self._warn.handle(logging.makeLogRecord({
                "name": record.name, "levelno": logging.WARNING, "levelname": "WARNING",
                "msg": f"optpipe: warning: cannot write --log-file {self.path} ({reason}); no more log lines go "
                       "there"}))

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        super().close()
