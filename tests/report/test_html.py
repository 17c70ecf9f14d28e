"""report.html: self-contained, with the charts and tables a reviewer needs."""

from __future__ import annotations

import re
from typing import Any

from optpipe.compare.parity import error_histogram
from optpipe.report.html import find_layer_errors, render_html


def _latency(p50: float) -> dict[str, Any]:
    samples = [p50 * (1 + 0.01 * (i % 17)) for i in range(120)] + [p50 * 30]
    return {"batch": 2, "threads": 2, "iterations": 121, "p50_ms": p50, "p90_ms": p50 * 1.2, "samples_ms": samples}


def _parity(passed: bool) -> dict[str, Any]:
    import numpy as np

    errors = np.abs(np.random.default_rng(0).normal(0, 1e-6, 500))
    return {
        "cases": [{"name": "example", "batch": 2}],
        "outputs": {"logits": {"max_abs": 4e-6, "mean_abs": 1e-6, "cosine": 0.99999, "cosine_min": 0.9999,
                               "top1_agreement": 1.0, "samples": 2, "passed": passed,
                               "failures": [] if passed else ["cosine 0.9 < 0.999"],
                               "tolerance": {"atol": 1e-4, "rtol": 1e-3, "min_cosine": 0.9999, "min_top1": None},
                               "error_histogram": error_histogram(errors)}},
        "passed": passed,
        "failures": [] if passed else ["output 'logits': cosine 0.9 < 0.999"],
    }


def sample_report() -> dict[str, Any]:
    layers = [{"node": f"/conv{i}/Conv", "op_type": "Conv", "module": f"conv{i}", "rel_error": 0.01 * i,
               "cosine": 1 - 0.001 * i, "contribution": 0.1 * i} for i in range(1, 4)]
    return {
        "schema": "optpipe.report/1", "model": "net.py:<Net>", "target": "cpu", "status": "complete",
        "passed": False, "exit_code": 1,
        "environment": {"cpu": "AMD EPYC", "cpu_count": 2, "torch": "2.13", "onnxruntime": "1.32"},
        "passes": [
            {"name": "export", "variant": "shared", "seconds": 3.2, "status": "cached"},
            {"name": "simplify", "variant": "shared", "seconds": 0.4, "status": "ok"},
            {"name": "engine-ort", "variant": "fp32", "seconds": 0.1, "status": "ok"},
            {"name": "validate", "variant": "fp32", "seconds": 0.2, "status": "ok"},
            {"name": "int8", "variant": "int8", "seconds": 2.0, "status": "ok",
             "metrics": {"layer_errors": layers}},
        ],
        "baseline": _latency(1.2),
        "variants": [
            {"precision": "fp32", "status": "built", "passed": True, "failures": [], "parity": _parity(True),
             "latency": _latency(0.3), "speedup_vs_torch": 4.0, "artifact": "fp32/model.ort-cpu.onnx", "passes": {}},
            {"precision": "int8", "status": "built", "passed": False, "failures": ["output 'logits': cosine"],
             "parity": _parity(False), "latency": _latency(0.9), "speedup_vs_torch": 0.8, "artifact": "x",
             "passes": {}},
        ],
        "warnings": ["something to look at"],
        "build": {"inputs": [{"name": "x", "shape": ["batch", 1, 8, 8], "dtype": "float32"}], "outputs": ["logits"],
                  "dynamic": [{"name": "batch", "min": 1, "opt": 8, "max": 64}], "tolerances": {}},
    }


def test_page_has_every_section_as_inline_svg() -> None:
    page = render_html(sample_report())
    for section in ("summary", "speedup", "latency", "errors", "layers", "timeline", "warnings", "environment"):
        assert f"<section id={section}>" in page
    # speedup + latency + one histogram per variant/output + timeline
    assert page.count("<svg") == 5
    assert page.count("<svg") == page.count("</svg>")
    assert "4.00×" in page and "0.80×" in page
    assert "/conv3/Conv" in page
    assert "cached" in page


def test_page_is_self_contained() -> None:
    page = render_html(sample_report())
    assert not re.search(r"https?://", page)
    assert "<script" not in page and "<link" not in page and "@import" not in page and "url(http" not in page
    assert "&lt;Net&gt;" in page and "<Net>" not in page  # report values are escaped


def test_page_without_benchmark_or_parity() -> None:
    report = sample_report()
    report["baseline"] = None
    for variant in report["variants"]:
        variant.update(latency=None, speedup_vs_torch=None, parity=None)
    page = render_html(report)
    assert "No latency was measured" in page and "No speedup measured" in page


def test_layer_errors_are_found_on_the_variant_or_its_passes() -> None:
    report = sample_report()
    assert find_layer_errors(report, report["variants"][1])[0]["node"] == "/conv1/Conv"
    assert find_layer_errors(report, report["variants"][0]) == []
    report["variants"][0]["layer_errors"] = [{"node": "n"}]
    assert find_layer_errors(report, report["variants"][0]) == [{"node": "n"}]


def test_error_histogram_uses_log_bins_and_counts_zeros() -> None:
    import numpy as np

    histogram = error_histogram(np.array([0.0, 0.0, 1e-7, 1e-5, 1e-3, np.inf]))
    assert histogram["zeros"] == 2 and histogram["nonfinite"] == 1 and histogram["total"] == 6
    assert sum(histogram["counts"]) == 3
    assert histogram["edges"][0] <= 1e-7 and histogram["edges"][-1] >= 1e-3


def test_selection_skipped_and_rejected_variants_are_shown() -> None:
    report = sample_report()
    report["variants"].append(
        {"precision": "int8-dynamic", "status": "skipped", "reason": "nothing to quantize", "passed": False}
    )
    report["variants"].append({"precision": "fp16", "passed": False, "required": False, "failures": ["cosine low"]})
    report["selected"] = {"precision": "int8", "artifact": "int8/model.ort-cpu.onnx", "reason": "fastest passing"}
    page = render_html(report)
    assert "Selected: int8" in page and "fastest passing" in page
    assert ">skipped<" in page and "nothing to quantize" in page
    assert ">rejected<" in page and "cosine low" in page
