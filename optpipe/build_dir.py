"""The output directory of a build: staged, then swapped in whole.

A build writes into a hidden staging directory next to ``--out`` and renames
it into place only when it finishes (into an existing empty ``--out``, its
entries are moved in, ``report.json`` and ``manifest.json`` last). So an
interrupted build (Ctrl-C, a crash, a killed CI job) never leaves a directory
that looks complete, and with
``--overwrite`` the old and new artifacts are never mixed: the old directory
is moved aside, the new one renamed in, and only then the old one deleted.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from optpipe.artifact import umask_value
from optpipe.errors import UserInputError

STAGING_PREFIX = ".optpipe-partial-"


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse an existing output directory unless overwriting; refuse files."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserInputError(f"output path {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise UserInputError(f"output directory {out_dir} already exists; pass --overwrite to replace it")


def make_staging(out_dir: Path) -> Path:
    """Create the staging directory next to ``out_dir`` (same filesystem, so rename is atomic)."""
    parent = out_dir.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{out_dir.name}-", dir=parent))
        os.chmod(staging, 0o777 & ~umask_value())  # mkdtemp makes 0700; a build directory is shared
        return staging
    except OSError as error:
        raise UserInputError(f"cannot write the output directory {out_dir}: {error.strerror or error}") from None


def publish(staging: Path, out_dir: Path) -> None:
    """Swap the finished staging directory in as ``out_dir``."""
    out_dir = out_dir.resolve()  # `--out .` has no name to derive the old copy's name from
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        _move_into_empty(staging, out_dir)
        return
    old: Path | None = None
    if out_dir.exists():
        old = out_dir.with_name(f"{STAGING_PREFIX}{out_dir.name}-old-{os.getpid()}")
        os.replace(out_dir, old)
    os.replace(staging, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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
