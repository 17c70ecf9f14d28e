"""Engine sidecar metadata and the pure checks built on it (no TensorRT import here).

Why a sidecar: a TensorRT plan is an opaque blob that only deserializes on the
TensorRT version and GPU architecture that built it (unless it was built
version- or hardware-compatible), and a truncated copy fails deep inside
TensorRT with an unhelpful message. ``model.plan.json`` records what built the
plan and the plan's sha256, so a wrong machine or a corrupt file is refused up
front with a reason, on any machine, before TensorRT is even imported. The
same idea keeps TensorRT timing caches honest (``cache.json`` next to the
cache): a cache from another TensorRT version or GPU is set aside and rebuilt.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from optpipe.core.artifact import sha256_file, write_bytes_atomic
from optpipe.core.errors import UserInputError

SIDECAR_SCHEMA = 1
HARDWARE_LEVELS = ("none", "ampere_plus", "same_compute_capability")


def sidecar_path(plan_path: str | Path) -> Path:
    """``model.plan`` -> ``model.plan.json``."""
    plan_path = Path(plan_path)
    return plan_path.with_name(plan_path.name + ".json")


def write_json(path: str | Path, data: Mapping[str, Any]) -> None:
    """Atomically write pretty JSON."""
    write_bytes_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def read_sidecar(plan_path: str | Path) -> dict[str, Any]:
    """The engine's sidecar; UserInputError if missing or unreadable (the plan can't be trusted)."""
    path = sidecar_path(plan_path)
    if not path.is_file():
        raise UserInputError(
            f"engine metadata {path} is missing; optpipe refuses a plan without it because it cannot tell "
            "which TensorRT version and GPU built it. Rebuild the engine with optpipe."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserInputError(f"engine metadata {path} is unreadable ({exc}); rebuild the engine") from exc
    if not isinstance(data, dict) or "plan_sha256" not in data or "tensorrt_version" not in data:
        raise UserInputError(f"engine metadata {path} lacks plan_sha256/tensorrt_version; rebuild the engine")
    return data


def verify_plan_file(plan_path: str | Path, metadata: Mapping[str, Any]) -> None:
    """Refuse a missing, empty, truncated or altered plan (UserInputError). Pure: no TensorRT needed."""
    plan_path = Path(plan_path)
    if not plan_path.is_file():
        raise UserInputError(f"engine plan {plan_path} not found")
    size = plan_path.stat().st_size
    if size == 0:
        raise UserInputError(f"engine plan {plan_path} is empty (0 bytes); rebuild the engine")
    expected_size = metadata.get("plan_size")
    if isinstance(expected_size, int) and expected_size != size:
        raise UserInputError(
            f"engine plan {plan_path} is {size} bytes but was written as {expected_size} bytes "
            "(truncated or replaced); rebuild or re-copy it"
        )
    actual = sha256_file(plan_path)
    if actual != metadata.get("plan_sha256"):
        raise UserInputError(
            f"engine plan {plan_path} does not match its metadata (sha256 {actual[:12]}... != "
            f"{str(metadata.get('plan_sha256'))[:12]}...): corrupt or from another build; "
            "rebuild or re-copy it"
        )


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in str(version).split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def _cc(value: object) -> tuple[int, int] | None:
    """Compute capability as (major, minor) from "8.6", [8, 6] or (8, 6)."""
    if isinstance(value, str) and "." in value:
        major, minor = value.split(".", 1)
        return int(major), int(minor)
    if isinstance(value, list | tuple) and len(value) == 2:
        return int(value[0]), int(value[1])
    return None


def check_compatibility(metadata: Mapping[str, Any], machine: Mapping[str, Any]) -> list[str]:
    """Reasons this machine cannot run the engine described by ``metadata`` (empty list: it can).

    ``machine`` has the keys :func:`optpipe.runtime.tensorrt.engine.collect_device_info` returns
    (``tensorrt_version``, ``compute_capability``, ``gpu_name``...).

    Rules, from TensorRT's documentation on engine portability:

    * a plan only deserializes with the TensorRT version that built it, unless it was
      built ``version_compatible``; then a later TensorRT of the same major version may
      run it (optpipe does not allow crossing a major version);
    * a plan is specific to the GPU's compute capability, unless it was built with a
      hardware compatibility level: ``ampere_plus`` runs on compute capability >= 8.0,
      ``same_compute_capability`` on the same compute capability.
    """
    reasons: list[str] = []
    options = metadata.get("build_options", {}) or {}
    built_trt = str(metadata.get("tensorrt_version", ""))
    here_trt = str(machine.get("tensorrt_version", ""))
    if built_trt != here_trt:
        if options.get("version_compatible"):
            b, h = _version_tuple(built_trt), _version_tuple(here_trt)
            if not (b and h and b[0] == h[0] and h >= b):
                reasons.append(
                    f"engine was built version-compatible with TensorRT {built_trt}, which only runs on "
                    f"the same major version at the same or a later release; this machine has {here_trt}"
                )
        else:
            reasons.append(
                f"engine was built with TensorRT {built_trt} but this machine has TensorRT {here_trt}; "
                "TensorRT engines are not portable across TensorRT versions (rebuild here, or build with "
                "version_compatible=True)"
            )
    built_cc, here_cc = _cc(metadata.get("compute_capability")), _cc(machine.get("compute_capability"))
    level = str(options.get("hardware_compatibility") or "none").lower()
    if built_cc is None or here_cc is None:
        reasons.append("compute capability unknown for the engine or this GPU; cannot check portability")
    elif level == "ampere_plus":
        if here_cc < (8, 0):
            reasons.append(
                f"engine was built 'ampere_plus' hardware-compatible, which needs compute capability >= 8.0; "
                f"this GPU ({machine.get('gpu_name')}) is {here_cc[0]}.{here_cc[1]}"
            )
    elif built_cc != here_cc:
        reasons.append(
            f"engine was built for compute capability {built_cc[0]}.{built_cc[1]} "
            f"({metadata.get('gpu_name')}) but this GPU ({machine.get('gpu_name')}) is "
            f"{here_cc[0]}.{here_cc[1]}; engines are not portable across GPU architectures (rebuild here, "
            "or build with hardware_compatibility='ampere_plus')"
        )
    return reasons


def compatibility_warnings(metadata: Mapping[str, Any], machine: Mapping[str, Any]) -> list[str]:
    """Differences that do not stop the engine from loading but may cost speed or accuracy."""
    warnings = []
    built_gpu, here_gpu = metadata.get("gpu_name"), machine.get("gpu_name")
    level = str((metadata.get("build_options") or {}).get("hardware_compatibility") or "none").lower()
    if built_gpu and here_gpu and built_gpu != here_gpu and level == "none":
        warnings.append(
            f"engine was built on {built_gpu} and runs on {here_gpu}: same compute capability, but TensorRT "
            "tunes tactics per GPU model, so latency may differ; rebuild here for best performance"
        )
    return warnings


def timing_cache_sidecar(cache_path: str | Path) -> Path:
    """``cache.bin`` -> ``cache.bin.json``: who wrote the cache."""
    cache_path = Path(cache_path)
    return cache_path.with_name(cache_path.name + ".json")


def timing_cache_problem(cache_path: str | Path, machine: Mapping[str, Any]) -> str | None:
    """Why an existing timing cache must not be loaded here (None: it may be, or it does not exist).

    TensorRT only combines timing caches from the exact same TensorRT version, and
    entries timed on another GPU are wrong for this one. Polygraphy's ``CreateConfig``
    loads the cache with ``ignore_mismatch=False`` and does not explain a refusal, so
    optpipe records the writer in a sidecar and checks it (and the cache's sha256) first.
    """
    cache_path = Path(cache_path)
    if not cache_path.exists():
        return None
    side = timing_cache_sidecar(cache_path)
    try:
        info = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"timing cache {cache_path} has no readable {side.name}, so its TensorRT version is unknown"
    if str(info.get("tensorrt_version")) != str(machine.get("tensorrt_version")):
        return (
            f"timing cache {cache_path} was written by TensorRT {info.get('tensorrt_version')}, "
            f"this machine has {machine.get('tensorrt_version')}"
        )
    if _cc(info.get("compute_capability")) != _cc(machine.get("compute_capability")):
        return (
            f"timing cache {cache_path} was written on compute capability {info.get('compute_capability')}, "
            f"this GPU is {machine.get('compute_capability')}"
        )
    if info.get("sha256") != sha256_file(cache_path):
        return f"timing cache {cache_path} changed since optpipe wrote it (sha256 mismatch)"
    return None
