"""The output directory of a build: staged, then swapped in whole.

A build writes into a hidden staging directory next to ``--out`` and renames
it into place only when it finishes (into an existing empty ``--out``, its
entries are moved in, ``report.json`` and ``manifest.json`` last). So an
interrupted build (Ctrl-C, a crash, a killed CI job) never leaves a directory
that looks complete, and with
``--overwrite`` the old and new artifacts are never mixed: the new directory
is exchanged with the old one in one ``renameat2(RENAME_EXCHANGE)`` (where the
kernel has it; else the old one is moved aside and the new one renamed in),
and only then the old one deleted.

Rules that keep optpipe from deleting what it did not make:

* ``--overwrite`` replaces only a directory whose ``manifest.json`` says an
  optpipe build made it (:func:`is_optpipe_build`); anything else is exit 2.
* Publishing takes ``.optpipe-lock-<name>`` (``O_EXCL``) next to ``--out`` and
  re-checks that ``--out`` is still what the build saw when it started
  (:class:`OutState`): of two builds racing for one ``--out`` exactly one wins,
  the other exits 2 saying why.
* Staging directories of killed builds are removed after a day, and only ones
  that carry optpipe's marker file (or an optpipe manifest).

Test hook: ``OPTPIPE_TEST_PAUSE=POINT:DIR`` makes a build create
``DIR/POINT.reached`` at that point and wait there until ``DIR/POINT.release``
exists (the crash-safety tests SIGKILL it while it waits). Points:
``staged`` (golden data written), ``before-publish`` (staging complete),
``publish-locked`` (lock held, ``--out`` not yet touched), ``publish-swapped``
(new build in place, old one not yet deleted).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from optpipe.core.artifact import umask_value
from optpipe.core.errors import UserInputError
from optpipe.report.manifest import STAGING_MARKER

STAGING_PREFIX = ".optpipe-partial-"
LOCK_PREFIX = ".optpipe-lock-"
#: Written into every staging directory (removed before publishing): proof that optpipe made it.
MANIFEST_SCHEMA_PREFIX = "optpipe.manifest/"
STALE_STAGING_SECONDS = 24 * 3600
PAUSE_ENV = "OPTPIPE_TEST_PAUSE"


@dataclass(frozen=True)
class OutState:
    """What ``--out`` was when the build started: publishing refuses when it changed meanwhile."""

    kind: str  # "absent", "empty" or "build"
    manifest_sha256: str | None = None


def is_optpipe_build(directory: Path) -> bool:
    """Whether ``directory/manifest.json`` is an optpipe manifest (the proof ``--overwrite`` needs)."""
    try:
        data = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and str(data.get("schema", "")).startswith(MANIFEST_SCHEMA_PREFIX)


def out_state(out_dir: Path) -> OutState:
    """The current :class:`OutState` of ``out_dir``."""
    if not out_dir.exists():
        return OutState("absent")
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        return OutState("empty")
    try:
        digest = hashlib.sha256((out_dir / "manifest.json").read_bytes()).hexdigest()
    except OSError:
        digest = None
    return OutState("build", digest)


def check_out_dir(out_dir: Path, overwrite: bool) -> OutState:
    """Refuse an output directory optpipe may not write or replace; return what it is now.

    An existing non-empty directory needs ``--overwrite`` *and* must be an earlier optpipe
    build: ``--out . --overwrite`` in a project must not delete the project.
    """
    resolved = out_dir.resolve()  # a symlinked --out (a CI volume) is judged, and published, as its target
    if out_dir.exists() and not out_dir.is_dir():
        raise UserInputError(f"output path {out_dir} exists and is not a directory")
    if resolved.parent == resolved:
        raise UserInputError(f"output directory {out_dir} is the filesystem root; give a directory of its own")
    state = out_state(out_dir)
    if state.kind != "build":
        return state
    if not overwrite:
        raise UserInputError(f"output directory {out_dir} already exists; pass --overwrite to replace it")
    if not is_optpipe_build(out_dir):
        raise UserInputError(
            f"--overwrite refused: {out_dir} is not an optpipe build directory (no optpipe manifest.json); "
            "optpipe only replaces directories it made. Choose a new or empty --out"
        )
    if os.path.ismount(resolved):
        raise UserInputError(
            f"--overwrite refused: {out_dir} is a mount point and cannot be replaced; empty it or give a "
            "directory inside it as --out"
        )
    return state


def make_staging(out_dir: Path) -> Path:
    """Create the staging directory next to ``out_dir`` (same filesystem, so rename is atomic)."""
    parent = out_dir.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        clean_stale_staging(parent)
        staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{out_dir.resolve().name}-", dir=parent))
        os.chmod(staging, 0o777 & ~umask_value())  # mkdtemp makes 0700; a build directory is shared
        (staging / STAGING_MARKER).write_text(f"{os.getpid()}\n", encoding="utf-8")
        return staging
    except OSError as error:
        raise UserInputError(f"cannot write the output directory {out_dir}: {error.strerror or error}") from None


def clean_stale_staging(parent: Path, max_age: float = STALE_STAGING_SECONDS) -> list[Path]:
    """Remove ``.optpipe-partial-*`` directories older than ``max_age`` that optpipe made.

    A killed build (SIGKILL, a lost CI runner) cannot clean up after itself. Only directories
    that carry :data:`STAGING_MARKER` or an optpipe manifest (an old build set aside while
    publishing) are removed; a symlink or anything else with the prefix is left alone.
    """
    removed = []
    now = time.time()
    with contextlib.suppress(OSError):
        for child in parent.iterdir():
            if not child.name.startswith(STAGING_PREFIX) or child.is_symlink() or not child.is_dir():
                continue
            with contextlib.suppress(OSError):
                if now - child.lstat().st_mtime < max_age:
                    continue
                if (child / STAGING_MARKER).is_file() or is_optpipe_build(child):
                    shutil.rmtree(child)
                    removed.append(child)
    return removed


def pause_point(point: str) -> None:
    """The crash-safety tests' hook (see the module docstring); does nothing unless the variable is set."""
    value = os.environ.get(PAUSE_ENV, "")
    name, _, directory = value.partition(":")
    if name != point or not directory:
        return
    flags = Path(directory)
    (flags / f"{point}.reached").write_text(str(os.getpid()), encoding="utf-8")
    deadline = time.monotonic() + 300
    while not (flags / f"{point}.release").exists() and time.monotonic() < deadline:
        time.sleep(0.02)


@contextlib.contextmanager
def publish_lock(out_dir: Path) -> Iterator[None]:
    """``.optpipe-lock-<name>`` next to ``out_dir``, created with O_EXCL; exit 2 when another build holds it.

    A lock whose process is gone (a build killed while publishing) is taken over.
    """
    lock = out_dir.with_name(f"{LOCK_PREFIX}{out_dir.name}")
    for _attempt in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _lock_holder(lock)
            if holder is not None and _alive(holder):
                raise UserInputError(
                    f"another optpipe build (pid {holder}) is publishing to {out_dir} right now; this build "
                    "was not published. Rerun it, or give each build its own --out"
                ) from None
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()  # left by a killed build
            continue
        except OSError as error:
            raise UserInputError(f"cannot publish to {out_dir}: {error.strerror or error}") from None
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{os.getpid()}\n")
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
        return
    raise UserInputError(f"cannot take the publishing lock {lock}; remove it if no optpipe build is running")


def _lock_holder(lock: Path) -> int | None:
    try:
        return int(lock.read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def publish(staging: Path, out_dir: Path, expected: OutState | None = None) -> None:
    """Swap the finished staging directory in as ``out_dir``, unless another build got there first.

    ``expected`` is what :func:`check_out_dir` saw at the start; when ``out_dir`` changed since
    (another build published), nothing is replaced and the error says so.
    """
    out_dir = out_dir.resolve()  # `--out .` has no name to derive the old copy's name from
    pause_point("before-publish")
    (staging / STAGING_MARKER).unlink(missing_ok=True)
    try:
        with publish_lock(out_dir):
            pause_point("publish-locked")
            now = out_state(out_dir)
            if expected is not None and now != expected:
                raise UserInputError(
                    f"{out_dir} changed while this build ran (another optpipe build published there first); "
                    "this build was not published. Rerun with --overwrite to replace it, or use another --out"
                )
            _swap_in(staging, out_dir, now)
    except OSError as error:
        raise UserInputError(f"cannot publish the build to {out_dir}: {error.strerror or error}") from None


def _swap_in(staging: Path, out_dir: Path, now: OutState) -> None:
    if now.kind == "empty":
        _move_into_empty(staging, out_dir)
        return
    if now.kind == "absent":
        os.rename(staging, out_dir)
        return
    if _exchange(staging, out_dir):  # staging now holds the old build
        pause_point("publish-swapped")
        shutil.rmtree(staging, ignore_errors=True)
        return
    old = out_dir.with_name(f"{STAGING_PREFIX}{out_dir.name}-old-{os.getpid()}")
    os.rename(out_dir, old)
    os.rename(staging, out_dir)
    pause_point("publish-swapped")
    shutil.rmtree(old, ignore_errors=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(first: Path, second: Path) -> bool:
    """Atomically exchange two directories (Linux ``renameat2``); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    result = renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(second))


# Written last when moving into an existing directory: until they are there, it does not look complete.
_LAST = ("report.json", "manifest.json")


def _move_into_empty(staging: Path, out_dir: Path) -> None:
    """Move the build into an existing empty directory, keeping that directory itself.

    Renaming over it would break a mount point (a CI volume), a directory that
    is someone's working directory, or one whose ownership was set up front.
    """
    entries = sorted(staging.iterdir(), key=lambda p: p.name in _LAST)
    for entry in entries:
        os.replace(entry, out_dir / entry.name)
    staging.rmdir()


def discard(staging: Path) -> None:
    """Remove an unfinished staging directory."""
    shutil.rmtree(staging, ignore_errors=True)
