"""Benchmark: FP32 / FP16 / INT8 variants of every sample model, in one interleaved run per model.

For each sample model this builds the three variants for the CPU target (with
the model file's calibration and labelled eval data, so the accuracy guard and
accuracy gate run as in a real build), then times every variant's engine,
and PyTorch eager, side by side with :func:`optpipe.runtime.timing.interleaved_latency`
at a realistic batch: latencies from separate runs on a noisy 2-core machine
are not comparable, ratios of medians from one interleaved run are. Prints the
ratios and accuracy deltas and writes ``benchmarks/results/precision.json``.

Run: ``python benchmarks/precision.py [--batch 32] [--rounds 10] [--models digits_cnn,...]``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODELS = {
    "digits_cnn": "DigitsCNN",
    "text_encoder": "TinyTextEncoder",
    "two_heads": "TwoHeadNet",
}


def bench_model(name: str, batch: int, rounds: int, work: Path,
                precisions: tuple[str, ...] = ("fp32", "fp16", "int8")) -> dict[str, Any]:
    """Build ``precisions`` (fp32 first) for one sample model and time them interleaved at ``batch``."""
    from optpipe.builder.run import build
    from optpipe.compare.golden import resize_batch
    from optpipe.model.prepared import prepare_model
    from optpipe.runtime.runners import OrtRunner, TorchRunner
    from optpipe.runtime.timing import interleaved_latency, summarize

    spec = f"{ROOT / 'sample_models' / name}.py:{MODELS[name]}"
    prepared = prepare_model(spec, weights=ROOT / "sample_models" / "weights" / f"{name}.safetensors",
                             dynamics=[f"batch=1:{batch}:{max(batch, 64)}"])  # fmt: skip
    out = work / name
    report = build(
        prepared.module, prepared.example_inputs, out_dir=out, precisions=precisions,
        input_names=prepared.input_names, output_names=prepared.output_names, dynamic=prepared.dynamic,
        overwrite=True, benchmark=False, heldout_inputs=prepared.heldout_inputs, model_name=name,
        log=lambda _m: None, calib_data=prepared.calibration, eval_data=prepared.eval_set,
    )  # fmt: skip
    inputs, _labels = prepared.eval_set if prepared.eval_set else ({}, None)
    feed = resize_batch({k: np.ascontiguousarray(v[:batch]) for k, v in inputs.items()}, batch)
    torch_runner = TorchRunner(prepared.module, prepared.input_names, report.build["outputs"])
    calls: dict[str, Any] = {"torch": lambda: torch_runner.infer(feed)}
    variants: dict[str, Any] = {}
    for variant in report.variants:
        if not variant.get("artifact"):
            continue
        runner = OrtRunner(out / variant["artifact"])
        calls[variant["precision"]] = (lambda r=runner: r.infer(feed))
        variants[variant["precision"]] = {
            "passed": variant["passed"],
            "worst_cosine": min((o["cosine_min"] for o in (variant.get("parity") or {}).get("outputs", {}).values()),
                                default=None),
            "accuracy": (variant.get("accuracy") or {}).get("accuracy"),
            "drop_points": (variant.get("accuracy") or {}).get("drop_points"),
            "kept_nodes": [k["node"] for k in (variant["passes"].get(variant["precision"]) or {})
                           .get("kept_nodes", [])],
        }
    times = interleaved_latency(calls, rounds=rounds)
    import torch

    threads = torch.get_num_threads()
    stats = {key: summarize(values, batch, threads) for key, values in times.items()}
    fp32 = stats["fp32"]["p50_ms"]
    for precision, record in variants.items():
        record["latency"] = stats[precision]
        record["vs_fp32_engine"] = fp32 / stats[precision]["p50_ms"]
        record["vs_torch"] = stats["torch"]["p50_ms"] / stats[precision]["p50_ms"]
    return {
        "batch": batch,
        "torch_latency": stats["torch"],
        "torch_accuracy": ((report.accuracy or {}).get("torch_fp32") or {}).get("accuracy"),
        "variants": variants,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--precisions", default="fp32,fp16,int8", help="comma-separated; fp32 must be one")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "precision.json")
    args = parser.parse_args()
    from optpipe.report.build_report import environment

    results: dict[str, Any] = {"environment": environment(), "models": {}}
    with tempfile.TemporaryDirectory(prefix="optpipe-bench-") as tmp:
        for name in [m for m in args.models.split(",") if m]:
            precisions = tuple(p for p in args.precisions.split(",") if p)
            result = bench_model(name, args.batch, args.rounds, Path(tmp), precisions)
            results["models"][name] = result
            torch_p50 = result["torch_latency"]["p50_ms"]
            print(f"{name} (batch {result['batch']}): torch eager p50 {torch_p50:.3f} ms, "
                  f"accuracy {result['torch_accuracy']}")  # fmt: skip
            for precision, record in result["variants"].items():
                acc = record["accuracy"]
                acc_text = f"{acc:.2f}% (drop {record['drop_points']:+.2f})" if acc is not None else "-"
                print(f"  {precision:<12} p50 {record['latency']['p50_ms']:8.3f} ms  "
                      f"{record['vs_fp32_engine']:5.2f}x vs fp32 engine  {record['vs_torch']:5.2f}x vs torch  "
                      f"gate {'pass' if record['passed'] else 'FAIL'} (cosine_min {record['worst_cosine']:.4f})  "
                      f"accuracy {acc_text}  "
                      f"kept {record['kept_nodes']}")  # fmt: skip
            sys.stdout.flush()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
