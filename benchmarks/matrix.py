"""Wall time of a build matrix: the three sample models in-process (sequential) vs on a local Ray.

Both runs are the user's command, ``optpipe build -c FILE --no-benchmark
--no-cache --json`` as a subprocess, once with the default executor and once
with ``--executor ray`` (a local Ray started for the run, with as many CPUs
as the machine has: set ``--cpus`` to cap it via ``OPTPIPE_RAY_NUM_CPUS``). Wall
time includes Python start-up and, for Ray, starting and stopping Ray: what a
CI job pays. One run each; the ratio is sequential / Ray (above 1: Ray is
faster). Verdicts of both runs are compared, so a fast but wrong run shows.

Usage: python benchmarks/matrix.py [--out benchmarks/results/matrix.json] [--cpus 2]
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


def write_config(path: Path, out: str) -> Path:
    """The matrix: three models, fp32 and int8-dynamic each, dynamic batch, no benchmark."""
    lines = ['exporter = "auto"', 'dynamic = ["batch=1:8:64"]', 'precisions = ["fp32", "int8-dynamic"]', ""]
    for name, (spec, weights) in MODELS.items():
        lines += ["[[model]]", f'name = "{name}"', f'spec = "{ROOT / spec}"', f'weights = "{ROOT / weights}"',
                  f'out = "{out}/{name}"', ""]
    path.write_text("\n".join(lines))
    return path


def run(config: Path, executor: list[str], cpus: int) -> tuple[float, dict[str, object]]:
    """One matrix build; returns (wall seconds, the matrix JSON document)."""
    command = [str(Path(sys.executable).parent / "optpipe"), "build", "-c", str(config), "--no-benchmark",
               "--no-cache", "--json", *executor]
    env = dict(os.environ, OPTPIPE_RAY_NUM_CPUS=str(cpus))
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds, json.loads(done.stdout)


def verdicts(document: dict[str, object]) -> dict[str, list[tuple[str, object]]]:
    return {m["name"]: [(v["precision"], v["passed"]) for v in m["variants"]]  # type: ignore[index]
            for m in document["builds"]}  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/matrix.json")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray (default 2)")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]  # a shared machine: other work competes for the same cores
    with tempfile.TemporaryDirectory(prefix="optpipe-matrix-") as tmp:
        sequential_s, sequential = run(write_config(Path(tmp) / "seq.toml", "seq"), [], args.cpus)
        ray_s, on_ray = run(write_config(Path(tmp) / "ray.toml", "ray"), ["--executor", "ray"], args.cpus)
    if verdicts(sequential) != verdicts(on_ray):
        raise SystemExit(f"verdicts differ: {verdicts(sequential)} vs {verdicts(on_ray)}")
    nodes = sorted({str(m["node"]["node_id"]) for m in on_ray["builds"]})  # type: ignore[index,union-attr]
    result = {
        "models": list(MODELS), "precisions": ["fp32", "int8-dynamic"], "benchmark": False, "cache": False,
        "ray_cpus": args.cpus, "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
        "sequential_wall_s": round(sequential_s, 2), "ray_wall_s": round(ray_s, 2),
        "ratio_sequential_over_ray": round(sequential_s / ray_s, 2),
        "sequential_matrix_s": sequential["seconds"], "ray_matrix_s": on_ray["seconds"],
        "ray_nodes": len(nodes), "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "verdicts": verdicts(on_ray),
    }
    print(f"sequential {sequential_s:.1f}s, ray ({args.cpus} CPUs) {ray_s:.1f}s: "
          f"ratio {result['ratio_sequential_over_ray']}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
