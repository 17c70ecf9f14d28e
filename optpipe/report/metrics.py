"""A flat view of a report's numbers, for scripts and experiment trackers.

``report.json`` nests numbers by variant, output and measurement; a script that
only wants "the int8 p50" or an experiment tracker (MLflow takes a flat
``name -> float`` map) should not have to know that layout. :func:`flat_metrics`
reads the serialised report (``Report.to_dict()`` or a ``report.json`` loaded
from disk), so it keeps working whatever record types the builder uses.

Keys are ``<variant>.<metric>`` and ``<variant>.<metric>.<output>`` for
per-output numbers, e.g. ``fp32.p50_ms``, ``int8.cosine_min.logits``; PyTorch's
own numbers use the variant name ``torch``. Only finite numbers appear: a
variant that was not timed has no ``p50_ms`` key rather than a None.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

LATENCY_FIELDS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "throughput")
PARITY_FIELDS = ("cosine", "cosine_min", "top1_agreement", "max_abs", "max_rel", "mean_abs")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _put(metrics: dict[str, float], key: str, value: Any) -> None:
    number = _number(value)
    if number is not None:
        metrics[key] = number


def artifact_size(out_dir: Path, relative: str | None) -> int | None:
    """Bytes of a variant's artifact and its external-data files (``model.onnx.data`` next to ``model.onnx``)."""
    if not relative:
        return None
    path = out_dir / relative
    if not path.is_file():
        return None
    siblings = [p for p in path.parent.iterdir() if p.is_file() and p.name.startswith(path.name + ".")
                and p.suffix in (".data", ".bin")]
    return path.stat().st_size + sum(p.stat().st_size for p in siblings)


def variant_metrics(variant: Mapping[str, Any], out_dir: Path | None = None) -> dict[str, float]:
    """One variant's numbers, keyed without the variant prefix."""
    metrics: dict[str, float] = {}
    latency = variant.get("latency") or {}
    for name in LATENCY_FIELDS:
        _put(metrics, name, latency.get(name))
    _put(metrics, "speedup_vs_torch", variant.get("speedup_vs_torch"))
    outputs = (variant.get("parity") or {}).get("outputs") or {}
    for output, values in outputs.items():
        for name in PARITY_FIELDS:
            _put(metrics, f"{name}.{output}", (values or {}).get(name))
    accuracy = variant.get("accuracy") or {}
    _put(metrics, "accuracy", accuracy.get("accuracy"))
    _put(metrics, "accuracy_drop_points", accuracy.get("drop_points"))
    _put(metrics, "peak_rss_mb", (variant.get("memory") or {}).get("peak_rss_mb"))
    if "passed" in variant:
        metrics["passed"] = 1.0 if variant["passed"] else 0.0
    size = variant.get("size_bytes")
    if size is None and out_dir is not None:
        size = artifact_size(out_dir, variant.get("artifact"))
    _put(metrics, "size_bytes", size)
    return metrics


def flat_metrics(report: Mapping[str, Any], out_dir: Path | None = None) -> dict[str, float]:
    """``{"fp32.p50_ms": ..., "int8.cosine_min.logits": ..., "torch.p50_ms": ...}`` from a serialised report.

    ``out_dir`` (the build directory) lets artifact sizes be measured when the
    report does not already carry them.
    """
    metrics: dict[str, float] = {}
    for name in LATENCY_FIELDS:
        _put(metrics, f"torch.{name}", (report.get("baseline") or {}).get(name))
    reference = (report.get("accuracy") or {}).get("torch_fp32") or {}
    _put(metrics, "torch.accuracy", reference.get("accuracy"))
    for variant in report.get("variants") or []:
        prefix = variant.get("precision", "?")
        for key, value in variant_metrics(variant, out_dir).items():
            metrics[f"{prefix}.{key}"] = value
    if "passed" in report:
        metrics["passed"] = 1.0 if report["passed"] else 0.0
    return metrics
