"""Facts about this machine and its installed packages, read one way for the report, the manifest and the cache."""

from __future__ import annotations

import contextlib
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any


def package_version(name: str) -> str | None:
    """Installed version of a distribution, or None (never imports it)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cpu_name() -> str:
    """The CPU model name (``/proc/cpuinfo`` on Linux), else ``platform.processor()`` or the machine type."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def host_facts() -> dict[str, Any]:
    """Where a measurement was made: a different machine, CPU or core count measures differently."""
    return {"node": platform.node(), "machine": platform.machine(), "processor": cpu_name(),
            "cpus": os.cpu_count(), "system": platform.system(), "release": platform.release()}
