"""Cold vs warm build time per sample model, with the pass cache.

For each sample model: build into a fresh cache directory (cold), then
rebuild into another output directory with the same cache (warm). Both runs
are ``optpipe build`` subprocesses, so wall time includes Python and torch
start-up, which the cache cannot remove; the sum of pass times from
report.json is shown as well. Benchmarking is off (``--no-benchmark``): it
measures latency, always runs, and would dominate both columns.

Usage: python benchmarks/build_time.py [--out benchmarks/results/build_time.json] [--exporter auto]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "digits_cnn": ("sample_models/digits_cnn.py:DigitsCNN", "sample_models/weights/digits_cnn.safetensors"),
    "text_encoder": ("sample_models/text_encoder.py:TinyTextEncoder", "sample_models/weights/text_encoder.safetensors"),
    "two_heads": ("sample_models/two_heads.py:TwoHeadNet", "sample_models/weights/two_heads.safetensors"),
}


def run_build(spec: str, weights: str, out: Path, cache: Path, exporter: str) -> tuple[float, dict[str, object]]:
    """One build; returns (wall seconds, report dict)."""
    command = [str(Path(sys.executable).parent / "optpipe"), "build", spec, "--weights", weights,
               "--dynamic", "batch=1:8:64", "--out", str(out), "--no-benchmark", "--exporter", exporter,
               "--cache-dir", str(cache), "--json"]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ))
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise SystemExit(f"build of {spec} failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds, json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/build_time.json")
    parser.add_argument("--exporter", default="auto", choices=["auto", "dynamo", "torchscript"])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="optpipe-build-time-") as tmp:
        for name, (spec, weights) in MODELS.items():
            cache = Path(tmp) / f"cache-{name}"
            cold_s, cold = run_build(spec, weights, Path(tmp) / f"{name}-cold", cache, args.exporter)
            warm_s, warm = run_build(spec, weights, Path(tmp) / f"{name}-warm", cache, args.exporter)
            passes = lambda report: sum(p["seconds"] for p in report["passes"])  # noqa: E731
            rows.append({
                "model": name,
                "cold_wall_s": round(cold_s, 2),
                "warm_wall_s": round(warm_s, 2),
                "wall_ratio": round(cold_s / warm_s, 2),
                "cold_passes_s": round(passes(cold), 3),
                "warm_passes_s": round(passes(warm), 3),
                "passes_ratio": round(passes(cold) / max(passes(warm), 1e-9), 1),
                "warm_cached": [p["name"] for p in warm["passes"] if p["status"] == "cached"],
            })
    header = f"{'model':<14}{'cold s':>9}{'warm s':>9}{'ratio':>7}   {'passes cold':>11}{'warm':>8}{'ratio':>7}"
    print(header)
    for r in rows:
        print(f"{r['model']:<14}{r['cold_wall_s']:>9.2f}{r['warm_wall_s']:>9.2f}{r['wall_ratio']:>6.1f}x"
              f"   {r['cold_passes_s']:>11.2f}{r['warm_passes_s']:>8.2f}{r['passes_ratio']:>6.1f}x")
    result = {"exporter": args.exporter, "benchmark": False, "python": sys.version.split()[0],
              "cpu_count": os.cpu_count(), "models": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
