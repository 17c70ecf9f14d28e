"""Cache care: what the pass cache holds, and removing entries without disturbing builds.

``optpipe cache info`` lists entries, their size and their oldest/newest use;
``optpipe cache prune`` removes entries unused for N days and/or the least
recently used ones until the cache fits a size. Every build also keeps the
cache under a cap (default 10 GB, ``OPTPIPE_CACHE_MAX_SIZE``; ``0`` or ``none``
turns the cap off): ``optpipe build`` calls :func:`enforce_cap` when it finishes.

"Last used" is the entry directory's modification time: :class:`~optpipe.cache.store.PassCache`
sets it on every hit, and creating the entry sets it first. Access times are
not used: most file systems mount with ``relatime`` or ``noatime``.

An entry is never removed while in use: a build holds the key's ``flock``
(``locks/<key>.lock``) while it reads (a hit) or writes (a miss) that entry, so
eviction takes the same lock without waiting and skips the entry when it is
held. Removal renames the entry out of ``entries/`` first (one rename), so a
build that looks for it afterwards sees a plain miss, never half an entry.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from optpipe.cache.store import CACHE_FORMAT, default_cache_dir, iter_entries
from optpipe.core.value_checks import parse_size

MAX_SIZE_ENV = "OPTPIPE_CACHE_MAX_SIZE"
DEFAULT_MAX_SIZE = 10 * 1000**3  # 10 GB


def format_size(size: int) -> str:
    for unit, scale in (("GB", 1000**3), ("MB", 1000**2), ("kB", 1000)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def default_max_size() -> int | None:
    """The build-time cap: ``$OPTPIPE_CACHE_MAX_SIZE`` (``0``/``none`` = no cap), else 10 GB."""
    value = os.environ.get(MAX_SIZE_ENV, "").strip()
    if not value:
        return DEFAULT_MAX_SIZE
    if value.lower() in ("0", "none", "off", "unlimited"):
        return None
    return parse_size(value)


@dataclass(frozen=True)
class Entry:
    """One complete cache entry."""

    key: str
    path: Path
    pass_name: str
    size: int
    created: str
    last_used: float  # epoch seconds


@dataclass(frozen=True)
class CacheInfo:
    """What ``optpipe cache info`` prints."""

    directory: Path
    entries: tuple[Entry, ...]

    @property
    def size(self) -> int:
        return sum(e.size for e in self.entries)

    def summary(self) -> str:
        lines = [f"cache: {self.directory}", f"  entries: {len(self.entries)}, size {format_size(self.size)}"]
        if self.entries:
            oldest = min(self.entries, key=lambda e: e.last_used)
            newest = max(self.entries, key=lambda e: e.last_used)
            lines.append(f"  least recently used: {_when(oldest.last_used)} ({oldest.pass_name})")
            lines.append(f"  most recently used:  {_when(newest.last_used)} ({newest.pass_name})")
            per_pass: dict[str, list[Entry]] = {}
            for entry in self.entries:
                per_pass.setdefault(entry.pass_name, []).append(entry)
            for name, items in sorted(per_pass.items()):
                lines.append(f"    {name:<14} {len(items):>4} entries  {format_size(sum(e.size for e in items))}")
        cap = default_max_size()
        lines.append(f"  size cap per build: {format_size(cap) if cap else 'none'} (${MAX_SIZE_ENV})")
        return "\n".join(lines)


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(stamp))


def _tree_size(path: Path) -> int:
    total = 0
    for child in path.rglob("*"):
        with contextlib.suppress(OSError):
            if child.is_file() and not child.is_symlink():
                total += child.stat().st_size
    return total


def _read_entry(path: Path) -> Entry | None:
    try:
        record = json.loads((path / "record.json").read_text(encoding="utf-8"))
        stamp = path.stat().st_mtime
    except (OSError, ValueError):
        return None  # removed meanwhile, or unreadable: a build discards it on its next lookup
    if not isinstance(record, dict):
        return None
    return Entry(path.name, path, str(record.get("pass", "?")), _tree_size(path), str(record.get("created", "")),
                 stamp)


def cache_info(directory: str | Path | None = None) -> CacheInfo:
    root = Path(directory).expanduser() if directory is not None else default_cache_dir()
    entries = tuple(e for e in (_read_entry(p) for p in iter_entries(root)) if e is not None)
    return CacheInfo(root, entries)


def _remove_unless_locked(root: Path, entry: Entry) -> bool:
    """Remove ``entry`` if no build holds its key's lock; True when removed."""
    base = root / f"v{CACHE_FORMAT}"
    lock = base / "locks" / f"{entry.key}.lock"
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a build is reading or writing this entry right now
        trash = base / "tmp" / f"evict-{entry.key}-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            trash.parent.mkdir(parents=True, exist_ok=True)
            os.replace(entry.path, trash)
        except OSError:
            return False
        shutil.rmtree(trash, ignore_errors=True)
        return True
    finally:
        os.close(fd)  # closing the descriptor releases the flock


@dataclass(frozen=True)
class PruneResult:
    removed: tuple[Entry, ...]
    kept: tuple[Entry, ...]
    in_use: tuple[Entry, ...]

    def summary(self) -> str:
        text = (f"removed {len(self.removed)} entries ({format_size(sum(e.size for e in self.removed))}); "
                f"kept {len(self.kept)} ({format_size(sum(e.size for e in self.kept))})")
        if self.in_use:
            text += f"; {len(self.in_use)} in use by a running build were left alone"
        return text


def prune(directory: str | Path | None = None, *, max_size: int | None = None, older_than_days: float | None = None,
          now: Callable[[], float] = time.time) -> PruneResult:
    """Remove entries unused for ``older_than_days``, then least recently used ones until ``max_size`` fits."""
    info = cache_info(directory)
    removed: list[Entry] = []
    in_use: list[Entry] = []
    remaining = sorted(info.entries, key=lambda e: e.last_used)  # least recently used first
    if older_than_days is not None:
        cutoff = now() - older_than_days * 86400
        for entry in [e for e in remaining if e.last_used < cutoff]:
            (removed if _remove_unless_locked(info.directory, entry) else in_use).append(entry)
    remaining = [e for e in remaining if e not in removed and e not in in_use]
    if max_size is not None:
        total = sum(e.size for e in remaining) + sum(e.size for e in in_use)
        for entry in list(remaining):
            if total <= max_size:
                break
            if _remove_unless_locked(info.directory, entry):
                removed.append(entry)
                total -= entry.size
            else:
                in_use.append(entry)
            remaining.remove(entry)
    return PruneResult(tuple(removed), tuple(remaining), tuple(in_use))


def enforce_cap(directory: Path, log: Callable[[str], None] | None = None) -> PruneResult | None:
    """After a build: evict least recently used entries over the cap (never one a running build has locked)."""
    cap = default_max_size()
    if cap is None:
        return None
    info = cache_info(directory)
    if info.size <= cap:
        return None
    result = prune(directory, max_size=cap)
    if log is not None and result.removed:
        log(f"     cache over {format_size(cap)} (${MAX_SIZE_ENV}): {result.summary()}")
    return result
