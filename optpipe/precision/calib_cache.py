"""Calibration cache: computed activation ranges stored as JSON.

Calibration runs the model over every sample and, for entropy/percentile,
builds 2048-bin histograms per tensor: seconds to minutes that a rebuild with
the same model and data should not pay again. A cache entry is keyed by the
sha256 of the model file, a fingerprint of the calibration data, the method
and the method's parameters; a key mismatch means the ranges describe another
model or other data and are never used silently.

File format (``optpipe-calib-cache/1``)::

    {"format": "optpipe-calib-cache/1",
     "key": {"model_sha256": "...", "data_sha256": "...", "method": "entropy", "params": {...}},
     "ranges": {"tensor name": [low, high], ...}}
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from optpipe.core.errors import UserInputError
from optpipe.core.safe_output import write_output

FORMAT = "optpipe-calib-cache/1"

Ranges = dict[str, tuple[float, float]]


@dataclass(frozen=True)
class CacheKey:
    """What a set of ranges was computed from. ``data_sha256`` is ``""`` when unknown."""

    model_sha256: str
    data_sha256: str
    method: str
    params: dict[str, Any] = field(default_factory=dict)

    def digest(self) -> str:
        """Short stable hash used as the cache file name."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def mismatch(self, other: CacheKey) -> list[str]:
        """Names of the key fields that differ (empty when the keys match)."""
        return [name for name in ("model_sha256", "data_sha256", "method", "params")
                if getattr(self, name) != getattr(other, name)]  # fmt: skip


def save_ranges(path: Path, key: CacheKey, ranges: Ranges) -> None:
    """Write a cache file atomically (temporary name, then rename) with the one safe writer."""
    payload = {
        "format": FORMAT,
        "key": asdict(key),
        "ranges": {name: [float(lo), float(hi)] for name, (lo, hi) in sorted(ranges.items())},
    }
    write_output(Path(path), json.dumps(payload, indent=1).encode())  # through symlinks; never replaces a device


def load_ranges(path: Path) -> tuple[CacheKey, Ranges]:
    """Read and validate a cache file; any defect is a one-line ``UserInputError``."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise UserInputError(f"calibration cache '{path}' does not exist") from exc
    except (OSError, ValueError) as exc:
        raise UserInputError(f"calibration cache '{path}' is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserInputError(
            f"calibration cache '{path}' is not an optpipe cache (format must be '{FORMAT}')"
        )
    raw_key, raw_ranges = payload.get("key"), payload.get("ranges")
    if not isinstance(raw_key, dict) or not isinstance(raw_ranges, dict):
        raise UserInputError(f"calibration cache '{path}' lacks its 'key' or 'ranges' object")
    try:
        key = CacheKey(
            model_sha256=str(raw_key["model_sha256"]),
            data_sha256=str(raw_key.get("data_sha256", "")),
            method=str(raw_key["method"]),
            params=dict(raw_key.get("params", {})),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise UserInputError(f"calibration cache '{path}' has a malformed key: {exc}") from exc
    return key, validate_ranges(raw_ranges, str(path))


def validate_ranges(raw: Any, origin: str) -> Ranges:
    """Check ``{tensor: (low, high)}`` with finite ``low <= high``; return it as floats."""
    if not isinstance(raw, dict) or not raw:
        raise UserInputError(f"{origin}: ranges must be a non-empty mapping of tensor name -> [low, high]")
    ranges: Ranges = {}
    for name, value in raw.items():
        try:
            lo, hi = (float(v) for v in value)
        except (TypeError, ValueError) as exc:
            raise UserInputError(f"{origin}: range of '{name}' must be [low, high], got {value!r}") from exc
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
            raise UserInputError(f"{origin}: range of '{name}' is invalid: [{lo}, {hi}]")
        ranges[str(name)] = (lo, hi)
    return ranges


def check_cache_file(path: Path) -> None:
    """``--calib-cache FILE`` before any work: a corrupt file is an error naming it, and it must be writable.

    A corrupt file is refused rather than silently recalibrated over: the user
    named it, so it may hold ranges they mean to reuse (or point at the wrong file).
    """
    from optpipe.core.safe_output import output_refusal

    path = Path(path)
    reason = output_refusal(path)
    if reason is None and path.exists() and not os.access(path, os.W_OK):
        reason = "the file is not writable"
    if reason:
        raise UserInputError(f"--calib-cache '{path}' cannot be written: {reason}")
    if path.is_file():
        try:
            load_ranges(path)
        except UserInputError as error:
            raise UserInputError(f"--calib-cache: {error}; delete or fix the file to recalibrate") from None


def write_back(built: Path, target: Path) -> None:
    """Copy the build's ranges to the user's ``--calib-cache`` file: atomically, or in place on a device or FIFO."""
    write_output(Path(target), Path(built).read_bytes())


class CalibCache:
    """A folder of cache files, one per key (``<digest>.json``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def path_for(self, key: CacheKey) -> Path:
        return self.directory / f"calib-{key.method}-{key.digest()}.json"

    def lookup(self, key: CacheKey) -> Ranges | None:
        """Ranges for exactly ``key``, or ``None`` (absent, or stored under another key)."""
        path = self.path_for(key)
        if not path.is_file():
            return None
        stored, ranges = load_ranges(path)
        return ranges if not stored.mismatch(key) else None

    def store(self, key: CacheKey, ranges: Ranges) -> Path:
        path = self.path_for(key)
        save_ranges(path, key, ranges)
        return path
