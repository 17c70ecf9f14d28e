"""Process memory (resident set size) around a benchmark, for the report.

Both runtimes of a CPU benchmark run in this one process, interleaved, so
their memory cannot be told apart by sampling: what is reported is the RSS the
engine's session added when it was created (its weights and arena) and the
process's peak RSS while the benchmark loop ran (both runtimes, their inputs
and outputs). GPU memory of a TensorRT engine comes from its runner instead.
Linux reads ``/proc/self/statm``; elsewhere :mod:`resource`'s ``ru_maxrss``
gives the peak only.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from types import TracebackType

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


#: Growth of the resident set (bytes) after which :func:`release_free_heap` collects and trims.
RELEASE_STEP = 192 << 20
_RELEASED = [0]  # the resident set after the last release


def release_free_heap() -> None:
    """Hand heap pages that are free but still mapped back to the OS (glibc's ``malloc_trim``); no-op elsewhere.

    Why: a build's steps (export, onnxslim, quantization, the guard's analyses) each allocate and free
    hundreds of MB; glibc keeps the freed pages mapped, so the process's resident size only grows, pass
    after pass. Trimming after each pass lowers the build's peak RSS (measured in
    benchmarks/real_models.py); it frees nothing Python still references. A full garbage collection
    runs first: exported graphs and ONNX models sit in reference cycles that would otherwise wait for
    the collector, hundreds of MB of them (MiniLM: 1.5 GB resident after onnxslim, 0.74 GB after this).
    Only when the resident set grew by :data:`RELEASE_STEP` since the last release: a full collection
    costs time in a large process, and small models never need it.
    """
    import gc

    now = current_rss_bytes()
    if now is not None and now - _RELEASED[0] < RELEASE_STEP:
        return
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # musl or another libc without malloc_trim
            pass
    _RELEASED[0] = current_rss_bytes() or 0


def current_rss_bytes() -> int | None:
    """Resident set size of this process now, or None where /proc is missing."""
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def available_memory_bytes() -> int | None:
    """Memory this process could still fill: what the kernel calls available plus what the process holds.

    ``MemAvailable`` (``/proc/meminfo``) without swap, capped by the cgroup's ``memory.max`` when one is set
    (a container's limit is lower than the machine's memory); None where neither can be read.
    """
    available = None
    try:
        for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    held = current_rss_bytes() or 0
    total = available + held if available is not None else None
    try:
        limit_text = Path("/sys/fs/cgroup/memory.max").read_text(encoding="ascii").strip()
        if limit_text.isdigit():
            total = min(total, int(limit_text)) if total is not None else int(limit_text)
    except OSError:
        pass
    return total


def high_water_bytes() -> int | None:
    """This process's peak RSS as the kernel keeps it (``VmHWM`` of ``/proc/self/status``), None without /proc.

    Why not only :func:`max_rss_bytes`: ``ru_maxrss`` also counts the image that ran before ``exec`` (a fork of
    a large parent), ``VmHWM`` only this program's memory. Exact where sampling is blind: a sampling thread
    needs the GIL, and a C call that holds it (protobuf serialising a model, an ONNX Runtime session reading
    its weights) can allocate and free hundreds of MB between two samples.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def max_rss_bytes() -> int | None:
    """Peak RSS of the process so far (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


class RssSampler:
    """Samples RSS on a background thread while its ``with`` block runs; ``peak`` is the highest seen.

    When the process's high-water mark (:func:`high_water_bytes`) rose while the block ran, the block set it,
    so ``peak`` is that mark: exact even for a spike between two samples (a C call holding the GIL). Else the
    block's peak lies below an earlier one and ``peak`` is the highest sample (a lower bound).
    """

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self.peak: int | None = current_rss_bytes()
        self._high_water_start: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="optpipe-rss", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        now = current_rss_bytes()
        if now is not None and (self.peak is None or now > self.peak):
            self.peak = now

    def start(self) -> RssSampler:
        """Start sampling (what ``with`` does); :meth:`stop` ends it."""
        self._high_water_start = high_water_bytes()
        self._thread.start()
        return self

    def stop(self) -> int | None:
        """Stop sampling (idempotent) and return the peak (bytes; None where /proc is missing)."""
        if not self._stop.is_set():
            self._stop.set()
            if self._thread.is_alive():
                self._thread.join()
            self._sample()
            high_water = high_water_bytes()
            if high_water is not None and self._high_water_start is not None and high_water > self._high_water_start:
                self.peak = max(self.peak or 0, high_water)  # this block set the process's peak
        return self.peak

    def __enter__(self) -> RssSampler:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def mib(value: int | None) -> float | None:
    return round(value / (1 << 20), 1) if value is not None else None
