"""Report.metrics(): the flat view scripts and experiment trackers read."""

from __future__ import annotations

import math
from pathlib import Path

from optpipe.core.records import VariantResult
from optpipe.report.build_report import Report
from optpipe.report.metrics import flat_metrics
from tests.report.test_html import sample_report


def test_flat_keys_per_variant_output_and_torch() -> None:
    metrics = flat_metrics(sample_report())
    assert metrics["fp32.p50_ms"] == 0.3 and metrics["int8.p50_ms"] == 0.9
    assert metrics["torch.p50_ms"] == 1.2
    assert metrics["int8.cosine_min.logits"] == 0.9999 and metrics["fp32.top1_agreement.logits"] == 1.0
    assert metrics["fp32.speedup_vs_torch"] == 4.0
    assert metrics["fp32.passed"] == 1.0 and metrics["int8.passed"] == 0.0 and metrics["passed"] == 0.0
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())


def test_missing_or_non_finite_numbers_are_left_out() -> None:
    data = sample_report()
    data["variants"][1]["latency"] = None  # not timed
    data["variants"][0]["speedup_vs_torch"] = float("nan")
    data["variants"][0]["parity"]["outputs"]["logits"]["top1_agreement"] = None
    metrics = flat_metrics(data)
    assert "int8.p50_ms" not in metrics
    assert "fp32.speedup_vs_torch" not in metrics and "fp32.top1_agreement.logits" not in metrics


def test_size_is_measured_from_the_build_directory(tmp_path: Path) -> None:
    (tmp_path / "fp32").mkdir()
    (tmp_path / "fp32" / "model.ort-cpu.onnx").write_bytes(b"x" * 100)
    (tmp_path / "fp32" / "model.ort-cpu.onnx.data").write_bytes(b"y" * 50)  # external data counts
    metrics = flat_metrics(sample_report(), tmp_path)
    assert metrics["fp32.size_bytes"] == 150.0
    assert "int8.size_bytes" not in metrics  # its artifact "x" does not exist


def test_report_metrics_method_uses_the_serialised_report(tmp_path: Path) -> None:
    data = sample_report()
    variants = [VariantResult.from_dict(v) for v in data["variants"]]  # Report holds typed variant records
    report = Report(target="cpu", model="m", variants=variants, baseline=data["baseline"], out_dir=tmp_path)
    assert report.metrics() == flat_metrics(report.to_dict(), tmp_path)
    assert report.metrics()["int8.cosine_min.logits"] == 0.9999
