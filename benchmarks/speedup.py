"""Latency of each sample model's CPU artifact against PyTorch eager.

For every sample model: build it with optpipe (fp32, cpu target, dynamic
batch), then time the ONNX Runtime artifact and PyTorch eager side by side in
one process, interleaved in shuffled blocks with warm-up (optpipe.runtime.timing), at
batch 1 and batch 32 with the same thread count. Prints the ratio of medians
and writes the figures as JSON.

    python benchmarks/speedup.py [--threads 2] [--rounds 15] [--out benchmarks/results/speedup.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

import optpipe
from optpipe.compare.golden import resize_batch
from optpipe.core.tensor_spec import DynamicDim
from optpipe.model.prepared import prepare_model
from optpipe.report.build_report import environment
from optpipe.runtime.runners import OrtRunner, TorchRunner
from optpipe.runtime.timing import interleaved_latency, summarize

ROOT = Path(__file__).resolve().parent.parent
MODELS = {
    "digits_cnn": "DigitsCNN",
    "text_encoder": "TinyTextEncoder",
    "two_heads": "TwoHeadNet",
}


def measure(name: str, cls: str, threads: int, rounds: int, batches: list[int]) -> dict[str, Any]:
    import torch

    spec = f"{ROOT / 'sample_models' / (name + '.py')}:{cls}"
    prepared = prepare_model(spec, weights=ROOT / "sample_models" / "weights" / f"{name}.safetensors")
    with tempfile.TemporaryDirectory() as tmp:
        report = optpipe.build(
            prepared.module, prepared.example_inputs, out_dir=Path(tmp) / "out", input_names=prepared.input_names,
            output_names=prepared.output_names, dynamic=[DynamicDim("batch", 1, 32, 64)], benchmark=False,
            threads=threads, log=lambda message: None,
        )
        assert report.passed, report.summary()
        artifact = Path(tmp) / "out" / report.variants[0]["artifact"]
        engine = OrtRunner(artifact, threads=threads)
        reference = TorchRunner(prepared.module, prepared.input_names, tuple(engine.output_names))
        example = {n: t.numpy() for n, t in zip(prepared.input_names, prepared.example_inputs, strict=True)}
        torch.set_num_threads(threads)
        results: dict[str, Any] = {"model": name, "batches": {}}
        for batch in batches:
            feed = resize_batch(example, batch)
            times = interleaved_latency(
                {"onnxruntime": lambda f=feed: engine.infer(f), "torch": lambda f=feed: reference.infer(f)},
                warmup=20, rounds=rounds, iters_per_round=20,
            )
            ort_stats = summarize(times["onnxruntime"], batch, threads)
            torch_stats = summarize(times["torch"], batch, threads)
            results["batches"][str(batch)] = {
                "onnxruntime": ort_stats,
                "torch": torch_stats,
                "speedup_p50": torch_stats["p50_ms"] / ort_stats["p50_ms"],
            }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "speedup.json")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    rows = [measure(name, cls, args.threads, args.rounds, batches) for name, cls in MODELS.items()]
    print(f"{'model':<14} {'batch':>5} {'torch p50 ms':>13} {'ort p50 ms':>11} {'speedup':>8}")
    for row in rows:
        for batch, figures in row["batches"].items():
            print(
                f"{row['model']:<14} {batch:>5} {figures['torch']['p50_ms']:>13.3f} "
                f"{figures['onnxruntime']['p50_ms']:>11.3f} {figures['speedup_p50']:>7.2f}x"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"threads": args.threads, "environment": environment(), "results": rows}
    text = json.dumps(payload, indent=2, default=lambda v: float(v) if isinstance(v, np.floating) else str(v))
    args.out.write_text(text + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
