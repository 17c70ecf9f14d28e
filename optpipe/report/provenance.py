"""Where a build came from: the files, the call, the time, the code versions.

A report that says "int8 passed" is only useful if one can tell *which*
weights and *which* model code passed. ``report.json`` and ``manifest.json``
carry a ``provenance`` record: the weights file (path, sha256), the model's
source file (path, sha256) and the git commit of the repository it lives in
(with whether that file has uncommitted changes), the command line or API call,
UTC start and end, and optpipe's version. Nothing here may fail a build: a
file that cannot be read or a missing ``git`` leaves the field ``None``.
"""

from __future__ import annotations

import inspect
import shlex
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from optpipe.core.artifact import sha256_file


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class ProvenanceInputs:
    """What only the caller knows: how optpipe was called and which files the model came from."""

    invocation: str = ""
    weights: str | None = None
    model_file: str | None = None


@dataclass(frozen=True)
class FileRecord:
    path: str
    sha256: str | None


@dataclass(frozen=True)
class GitRecord:
    commit: str
    dirty: bool | None  # the model file has uncommitted changes (None: git could not tell)
    repository: str


def file_record(path: str | Path | None) -> FileRecord | None:
    if path is None:
        return None
    resolved = Path(path).expanduser().resolve()
    try:
        digest: str | None = sha256_file(resolved)
    except OSError:
        digest = None
    return FileRecord(str(resolved), digest)


def git_record(path: str | Path | None) -> GitRecord | None:
    """The commit of the git repository holding ``path``, if any (``git`` on PATH, 5 s at most)."""
    if path is None:
        return None
    file = Path(path).resolve()

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(file.parent), *args], capture_output=True, text=True,
                                  timeout=5, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    top = git("rev-parse", "--show-toplevel")
    if not commit or not top:
        return None
    status = git("status", "--porcelain", "--", str(file))
    return GitRecord(commit, None if status is None else bool(status), top)


def model_source_file(model: Any) -> str | None:
    """The file that defines the model's class (None for torch's own classes, builtins, classes made at run time)."""
    if type(model).__module__.split(".")[0] == "torch":
        return None  # nn.Sequential & co.: torch's file says nothing about this model
    try:
        return inspect.getsourcefile(type(model))
    except (TypeError, OSError):  # a class whose module is not in sys.modules (loaded from a file path)
        pass
    code = getattr(getattr(type(model), "forward", None), "__code__", None)
    filename = getattr(code, "co_filename", None)
    return filename if filename and Path(filename).is_file() else None


def cli_invocation() -> str:
    """The command line as typed (``optpipe build ...``)."""
    return shlex.join(["optpipe", *sys.argv[1:]])


def _short(value: Any) -> str:
    if isinstance(value, str | int | float | bool | type(None) | Path):
        text = repr(str(value) if isinstance(value, Path) else value)
    elif isinstance(value, list | tuple) and all(isinstance(v, str | int | float) for v in value):
        text = repr(tuple(value))
    else:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 120 else text[:117] + "..."


def api_invocation(model: Any, kwargs: Mapping[str, Any]) -> str:
    """``optpipe.build(<TinyNet>, ..., out_dir='build/x', precisions=('fp32',))``: arrays and callables by type."""
    args = ", ".join(f"{key}={_short(value)}" for key, value in kwargs.items())
    return f"optpipe.build(<{type(model).__name__}>, <example inputs>{', ' + args if args else ''})"


def provenance_record(model: Any, inputs: ProvenanceInputs | None, started: str) -> dict[str, Any]:
    """The ``provenance`` of report.json / manifest.json (``finished`` is now)."""
    from optpipe.report.build_report import (
        package_version,  # not optpipe.__version__: the package root imports the builder
    )

    inputs = inputs or ProvenanceInputs()
    source = inputs.model_file or model_source_file(model)
    weights = file_record(inputs.weights)
    model_file = file_record(source)
    git = git_record(source)
    return {
        "invocation": inputs.invocation or api_invocation(model, {}),
        "started_utc": started,
        "finished_utc": utc_now(),
        "optpipe_version": package_version("optpipe"),
        "weights": asdict(weights) if weights else None,
        "model_source": asdict(model_file) if model_file else None,
        "git": asdict(git) if git else None,
    }
