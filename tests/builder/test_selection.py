"""``--precision auto`` ranks passing variants at the data's real lengths when the benchmark timed them there."""

from __future__ import annotations

from typing import Any

from optpipe.builder.selection import select_variant


def _variant(precision: str, example_ms: float) -> dict[str, Any]:
    return {"precision": precision, "passed": True, "artifact": f"{precision}/model.ort-cpu.onnx",
            "latency": {"p50_ms": example_ms}, "speedup_vs_torch": 100.0 / example_ms}


def _bucket(length: int, **p50: float) -> dict[str, Any]:
    return {"bucket": f"len{length}", "length": length, "batch": 1,
            "latency": {name.replace("_", "-"): {"p50_ms": ms} for name, ms in p50.items()}}


# At the padded example (128 tokens) fp32 is fastest; at the sentences' own lengths int8-dynamic is.
VARIANTS = [_variant("fp32", 10.0), _variant("int8-dynamic", 12.0)]
SERVING = [_bucket(13, fp32=4.0, int8_dynamic=2.0, torch=20.0), _bucket(35, fp32=6.0, int8_dynamic=4.0, torch=30.0)]


def test_auto_ranks_at_the_real_lengths_when_every_variant_was_timed_there() -> None:
    selected = select_variant(VARIANTS, True, SERVING)
    assert selected is not None and selected["precision"] == "int8-dynamic"
    assert "real lengths 13/35" in selected["reason"] and "8.33x PyTorch" in selected["reason"]
    assert selected["rejected"]["fp32"].startswith("slower: mean p50 5.000 ms")


def test_twin_without_serving_buckets_auto_ranks_at_the_example() -> None:
    selected = select_variant(VARIANTS, True)
    assert selected is not None and selected["precision"] == "fp32"


def test_a_variant_missing_from_a_bucket_falls_back_to_the_example_for_all() -> None:
    partial = [SERVING[0], _bucket(35, int8_dynamic=4.0, torch=30.0)]
    selected = select_variant(VARIANTS, True, partial)
    assert selected is not None and selected["precision"] == "fp32"
