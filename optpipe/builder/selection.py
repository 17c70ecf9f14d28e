"""Build policy over the variants: which precisions ``--precision auto`` tries, and which variant ships.

The measurements a choice rests on (parity, task accuracy in :mod:`optpipe.compare.task_accuracy`,
latency) are made elsewhere; this module only decides from them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from optpipe.core.precisions import FUSED_PRECISIONS, base_precision
from optpipe.core.records import PassStatus, VariantResult, VariantStatus


def select_variant(variants: Sequence[Mapping[str, Any]], auto: bool,
                   serving: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any] | None:
    """The fastest variant that passed every gate, with the reason and why each other one lost.

    Speed is each variant's speedup over PyTorch eager, measured in its own
    interleaved run (the p50 when a speedup is missing). When the benchmark also timed the data's real
    lengths (``serving``: the p50/p90/max buckets of ``report.benchmark.serving``) and every passing variant
    was timed in each bucket, speed is the mean of its p50s over those buckets instead: the example is often
    padded (MiniLM: 128 tokens for sentences of 9-35), and the variant fastest there need not be the one
    fastest at the lengths a server is fed. Without latencies (``--no-benchmark``, a split
    build) the lowest passing precision wins, since that is the one the user
    asked for when they asked for several.
    """
    passing = [v for v in variants if v.get("passed")]
    rejected: dict[str, str] = {}
    for variant in variants:
        if variant.get("passed"):
            continue
        if variant.get("status") == "skipped":
            rejected[variant["precision"]] = variant.get("reason") or "skipped"
        elif variant.get("status") == "pending":
            rejected[variant["precision"]] = "not validated yet (engine pending on another machine)"
        elif variant.get("unjudged") and not variant.get("failures"):
            rejected[variant["precision"]] = "unjudged: " + "; ".join(variant["unjudged"])
        else:
            rejected[variant["precision"]] = "; ".join(variant.get("failures") or ["failed its gates"])
    if not passing:
        return {"precision": None, "artifact": None, "reason": "no variant passed its gates", "rejected": rejected,
                "mode": "auto" if auto else "explicit"}  # fmt: skip
    timed = [v for v in passing if (v.get("latency") or {}).get("p50_ms")]
    if timed:
        cost, describe = _speed(timed, serving)

        best = min(timed, key=cost)
        others = sorted((v for v in timed if v is not best), key=cost)
        if others:
            versus = ", ".join(f"{v['precision']} {describe(v)}" for v in others)
            reason = f"fastest passing: {best['precision']} {describe(best)} vs {versus}"
        else:
            reason = f"only {best['precision']} passed ({describe(best)})"
        for v in others:
            rejected[v["precision"]] = f"slower: {describe(v)} vs {describe(best)}"
    else:
        order = {"int4-weight": 0, "int8": 0, "int8-dynamic": 0, "fp16": 1, "fp32": 2}
        best = min(passing, key=lambda v: order.get(base_precision(v["precision"]), 3))
        reason = (
            f"only {best['precision']} passed" if len(passing) == 1
            else f"lowest passing precision ({best['precision']}); no latency was measured"
        )  # fmt: skip
        for v in passing:
            if v is not best:
                rejected[v["precision"]] = "passed, but a lower precision also passed (no latency measured)"
    return {
        "precision": best["precision"],
        "artifact": best.get("artifact") or best.get("onnx"),
        "reason": reason,
        "rejected": rejected,
        "mode": "auto" if auto else "explicit",
    }


def _speed(timed: Sequence[Mapping[str, Any]], serving: Sequence[Mapping[str, Any]],
           ) -> tuple[Callable[[Mapping[str, Any]], float], Callable[[Mapping[str, Any]], str]]:
    """``(cost, describe)`` of the timed variants: at the data's real lengths when every one was timed there.

    Every engine was timed in the build's one interleaved run (optpipe.builder.plan.benchmark_variants),
    and in each serving bucket in one interleaved run of its own, so their medians compare directly.
    """
    buckets = [b for b in serving if b.get("latency")]
    at_lengths = {v["precision"]: [float((b["latency"].get(v["precision"]) or {}).get("p50_ms") or 0.0)
                                   for b in buckets] for v in timed}  # fmt: skip
    if buckets and all(all(ms > 0 for ms in p50s) for p50s in at_lengths.values()):
        eager = [float((b["latency"].get("torch") or {}).get("p50_ms") or 0.0) for b in buckets]
        lengths = "/".join(str(b.get("length")) for b in buckets)

        def serving_cost(v: Mapping[str, Any]) -> float:
            return float(np.mean(at_lengths[v["precision"]]))

        def serving_text(v: Mapping[str, Any]) -> str:
            text = f"mean p50 {serving_cost(v):.3f} ms at real lengths {lengths}"
            return f"{text}, {float(np.mean(eager)) / serving_cost(v):.2f}x PyTorch" if all(eager) else text

        return serving_cost, serving_text
    by_ratio = all(v.get("speedup_vs_torch") for v in timed)

    def cost(v: Mapping[str, Any]) -> float:
        return float(v["latency"]["p50_ms"])

    def describe(v: Mapping[str, Any]) -> str:
        text = f"p50 {v['latency']['p50_ms']:.3f} ms"
        return f"{text}, {v['speedup_vs_torch']:.2f}x PyTorch" if by_ratio else text

    return cost, describe


def auto_precisions(target: str, fuse: bool = True) -> tuple[str, ...]:
    """Candidates of ``--precision auto``, in build order: FP16 only where it can be faster (not on CPU, where ORT
    adds Casts).

    On the cpu target, ``fuse`` adds the transformer-fused twins of fp32 and int8-dynamic (ONNX Runtime's
    fusions, then the precision), built FIRST: fused and unfused are judged by the same gates, and the unfused
    twin is built only when its fused twin did not pass them (:func:`unfused_twins`; a graph with nothing to
    fuse skips its fused twins, so the unfused ones are built). Why not both: on the scale models (README,
    "Transformer fusions") int8-dynamic+fused ran at the speed of int8-dynamic on BERT-base (267 vs 265 ms) and
    2.2x faster on ViT-B/16, and building, validating and timing two more variants cost about 60 s of a
    BERT-base build's 240 s budget (issue 20). Naming both in ``--precision`` builds and times both.
    ``int4-weight`` is not a candidate: on the BERT-base scale model (README, "Weight-only INT4") it failed the
    INT8 gate and was no faster than fp32 on this CPU, and its pass, guard, validation and timing would add about
    2 minutes to an auto build; it is built when named in ``--precision``.
    """
    if target != "cpu":
        return ("fp32", "fp16", "int8")
    if not fuse:
        return ("fp32", "int8", "int8-dynamic")
    return (FUSED_PRECISIONS[0], "int8", FUSED_PRECISIONS[1], "fp32", "int8-dynamic")


def unfused_twins(precisions: Sequence[str]) -> dict[str, str]:
    """``{unfused variant: its fused twin}`` for the twins both in ``precisions`` (``--precision auto``'s plan).

    Under auto the unfused variant is built only when its fused twin did not pass its gates (failed, skipped
    because nothing fused, or unjudged): :func:`auto_precisions` says why.
    """
    return {base_precision(p): p for p in FUSED_PRECISIONS if p in precisions and base_precision(p) in precisions}


def twin_not_built(precision: str, twin: str) -> str:
    """The report's reason for an unfused auto candidate whose fused twin passed (one line)."""
    return (f"not built: its fused twin {twin} passed its gates, and --precision auto builds the unfused twin only "
            f"when the fused one does not pass (name both in --precision to build and time both)")


def skipped_variant(precision: str, error: Any, records: list[Any]) -> VariantResult:
    """The report entry of a variant whose precision pass found nothing to lower (see VariantSkipped)."""
    if records:
        records[-1].status = PassStatus.SKIPPED
        records[-1].metrics = dict(error.metrics)
        records[-1].error = None
        records[-1].warnings = [error.reason]
    return VariantResult(precision, VariantStatus.SKIPPED, reason=error.reason,
                         passes={r.name: r.metrics for r in records})
