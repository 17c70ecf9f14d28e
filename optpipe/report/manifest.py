"""``manifest.json``: what a build directory contains and how it was made.

Written as the last file of a build (just before the staging directory is
published), it lists every other file with its sha256 and size, the exact
resolved configuration (every pass of every pipeline with its config), the
package versions and the host. ``optpipe verify`` re-hashes against it, and
a CI job can diff two manifests to see what changed between builds.

Each file also says whether rebuilding with the same inputs and versions
gives the same bytes (``reproducible``) and, when not, why. The answers come
from building every sample model twice with each exporter and comparing the
bytes (torch 2.13, onnxscript, onnxslim 0.1.98, onnxruntime 1.32, CPU):
the exported, simplified and ONNX Runtime-optimized models and the golden
``.npz`` files were byte-identical; ``report.json`` and ``report.html``
differ (timings, latencies, host facts). Reasons are kept per kind of file so
they can be revised when a tool version behaves differently.
"""

from __future__ import annotations

import hashlib
import json
import platform
import socket
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from optpipe.core.artifact import sha256_file, write_bytes_atomic
from optpipe.core.machine import cpu_name, package_version
from optpipe.report.build_report import Report

MANIFEST = "manifest.json"
#: The file that marks a build directory still being written (never listed in a manifest).
STAGING_MARKER = ".optpipe-staging"
SCHEMA = "optpipe.manifest/1"
PACKAGES = (
    "optpipe", "torch", "onnx", "onnxruntime", "onnxscript", "onnxslim", "numpy",
    "polygraphy", "tensorrt", "safetensors", "click",
)

# (pattern, reproducible, reason). First match wins; patterns are matched with Path.match.
REPRODUCIBILITY: tuple[tuple[str, bool, str], ...] = (
    ("report.json", False, "records wall-clock pass times, latencies and the host"),
    ("report.html", False, "renders report.json (timings and latencies)"),
    ("*.plan", False, "TensorRT picks kernels by timing them on the GPU; engines differ between builds"),
    ("*.engine", False, "TensorRT picks kernels by timing them on the GPU; engines differ between builds"),
    ("*.timing.cache", False, "TensorRT timing cache: measured on the GPU"),
    # Before the *.json catch-all: these sidecars record values that change with every build.
    ("*.plan.json", False, "TensorRT plan sidecar: records the build time and the plan's sha256, which "
                           "differs between builds"),
    ("*.timing.cache.json", False, "timing-cache sidecar: records when and on which GPU the cache was written"),
    ("*.ort-cpu.onnx", True, "ONNX Runtime offline optimisation: byte-identical in repeated builds "
                             "(measured)"),
    ("model.export.onnx", True, "torch.onnx export (dynamo and TorchScript): byte-identical in repeated "
                                "builds (measured)"),
    ("*.onnx", True, "ONNX written by onnx/onnxslim: byte-identical in repeated builds (measured)"),
    ("*.onnx.data", True, "external data of an ONNX file"),
    ("golden/*.npz", True, "numpy .npz of PyTorch outputs: byte-identical on the same machine and versions "
                           "(measured); other CPUs or thread counts may change low-order bits"),
    ("*.json", True, "metadata written from deterministic values"),
)


def reproducibility(relative: str) -> tuple[bool | None, str]:
    """Whether a build file is expected to be byte-reproducible, and why."""
    path = Path(relative)
    for pattern, reproducible, reason in REPRODUCIBILITY:
        if path.match(pattern):
            return reproducible, reason
    return None, "not measured"


def build_files(directory: Path) -> list[Path]:
    """Every regular file of a build directory except the manifest, sorted by relative path.

    The staging marker is left out too: it is removed when the build is published.
    """

    unlisted = {MANIFEST, STAGING_MARKER}
    files = [
        p for p in directory.rglob("*") if p.is_file() and p.relative_to(directory).as_posix() not in unlisted
    ]
    return sorted(files, key=lambda p: p.relative_to(directory).as_posix())


def file_entries(directory: Path) -> list[dict[str, Any]]:
    """The ``files`` list of a manifest."""
    entries = []
    for path in build_files(directory):
        relative = path.relative_to(directory).as_posix()
        reproducible, reason = reproducibility(relative)
        entries.append({
            "path": relative,
            "sha256": sha256_file(path),
            "size": path.stat().st_size,
            "reproducible": reproducible,
            "reproducible_reason": reason,
        })
    return entries


def _plain(value: Any) -> Any:
    """JSON-safe copy of a config value (arrays and objects become short descriptions)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Path):
        return str(value)
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"<array {getattr(value, 'dtype', '')} {tuple(shape)}>"
    return repr(value)


def host() -> dict[str, Any]:
    """The machine that made the build."""
    import os

    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }


def resolved_config(report: Report, ctx: Any, pipelines: Iterable[Any]) -> dict[str, Any]:
    """Everything that decided the build: build record, threads, the parsed options and each pass's config."""
    build = report.build.to_dict() if report.build is not None else {}
    return {
        "model": report.model,
        "target": report.target,
        "inputs": build.get("inputs"),
        "outputs": build.get("outputs"),
        "dynamic": build.get("dynamic"),
        "precisions": build.get("precisions"),
        "tolerances": build.get("tolerances"),
        "threads": getattr(ctx, "threads", None),
        "options": _plain(build.get("options") or {}),
        "pipelines": {
            pipeline.variant: [
                {"pass": p.name, "class": f"{type(p).__module__}.{type(p).__qualname__}",
                 "config": _plain(p.config_dict())}
                for p in pipeline.passes
            ]
            for pipeline in pipelines
        },
    }


SELF_HASH = "manifest_sha256"


def canonical_sha256(manifest: Mapping[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON (sorted keys, no whitespace), its own hash left out.

    Stored in the manifest as ``manifest_sha256`` so ``optpipe verify`` catches any edit of the
    manifest itself (a changed dtype, version or file hash), not only of the files it lists.
    It protects against accidents and careless edits, not against someone who recomputes it.
    """
    body = {k: v for k, v in manifest.items() if k != SELF_HASH}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def make_manifest(directory: Path, report: Report, ctx: Any = None, pipelines: Sequence[Any] = ()) -> dict[str, Any]:
    """The manifest of a finished build directory (not written), ending with its own hash."""
    manifest: dict[str, Any] = {
        "schema": SCHEMA,
        "model": report.model,
        "files": file_entries(directory),
        "config": resolved_config(report, ctx, pipelines),
        "packages": {name: package_version(name) for name in PACKAGES},
        "host": host(),
        "provenance": report.provenance,
    }
    # A JSON round trip first, so the hash is of exactly what verify will read back.
    manifest = json.loads(json.dumps(manifest))
    manifest[SELF_HASH] = canonical_sha256(manifest)
    return manifest


def write_manifest(directory: Path, report: Report, ctx: Any = None, pipelines: Sequence[Any] = ()) -> dict[str, Any]:
    """Write ``directory/manifest.json`` (atomically) and return it. Call after every other file."""
    manifest = make_manifest(directory, report, ctx, pipelines)
    write_bytes_atomic(directory / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest


def load_manifest(directory: Path) -> dict[str, Any]:
    """Read a build directory's manifest (raises OSError / ValueError as json does)."""
    return json.loads((directory / MANIFEST).read_text(encoding="utf-8"))


def finish_build_dir(directory: Path, report: Report, ctx: Any = None, pipelines: Sequence[Any] = ()) -> None:
    """Write ``report.html`` and then ``manifest.json`` (last, so it lists every other file)."""
    from optpipe.report.html import write_html_report

    write_html_report(directory / "report.html", report.to_dict())
    write_manifest(directory, report, ctx, pipelines)


def refresh_after_edit(directory: Path, report: Report) -> None:
    """After a later command added to a finished build (``optpipe sweep``): report.json, report.html, then
    the manifest's file hashes, keeping the rest of it (the config and host that made the build)."""
    from optpipe.report.html import write_html_report

    report.write(directory / "report.json")
    write_html_report(directory / "report.html", report.to_dict())
    manifest = {k: v for k, v in load_manifest(directory).items() if k != SELF_HASH}
    manifest["files"] = file_entries(directory)
    manifest = json.loads(json.dumps(manifest))
    manifest[SELF_HASH] = canonical_sha256(manifest)
    write_bytes_atomic(directory / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
