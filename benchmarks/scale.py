"""Production-size models through the CLI (issue 20): wall time, peak RSS overall and per pass, artifact sizes.

Models (random seeded weights, since no model hub is reachable; same code paths as trained ones):

* ``bert_base``: BERT-base encoder, 110 M parameters (0.44 GB FP32), real sentences: ``--precision auto``;
* ``vit_b16``: ViT-B/16 at 224, 86 M (0.34 GB), no data: ``--precision auto --synthetic-calib``;
* ``bert_wide``: BERT 1536 wide x 20 layers, 610 M (2.4 GB, external data):
  ``--precision fp32,int8-dynamic,int4-weight --guard-seconds 900``. Not in the default list: it needs external
  data over 2 GB end to end and the ``int4-weight`` precision (``--models bert_wide`` runs it). The guard's
  budget: on this model one gate run is ~40 s and one int4 quantize ~40 s, and the int4 guard's probe of its
  120 MatMuls ~3 minutes; the default 60 s pays for none of it.

Each build is a cold ``optpipe build`` subprocess (an empty build cache), then ``optpipe verify`` on its
directory. Recorded: wall seconds, the build process's peak RSS (its own ``ru_maxrss``, read by a
wrapper: see :data:`PEAK_WRAPPER`), each pass's wall seconds and peak RSS from report.json, every
variant's verdict and artifact size, the exit codes, and the RSS target of issue 20
(3 x FP32 weights + 1.5 GB). Run one model per command through the shared lock; results accumulate::

    flock /work/heavy.lock .venv/bin/python benchmarks/scale.py --models bert_base
    flock /work/heavy.lock .venv/bin/python benchmarks/scale.py --models vit_b16

Writes ``benchmarks/results/scale.json`` and prints the Markdown tables the README quotes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peak_rss import PEAK_WRAPPER

ROOT = Path(__file__).resolve().parent.parent
OPTPIPE = Path(sys.executable).parent / "optpipe"
RESULTS = ROOT / "benchmarks" / "results" / "scale.json"
TARGET_WEIGHT_COPIES, TARGET_FIXED_BYTES = 3, 1_500_000_000  # issue 20: peak RSS <= 3 x FP32 weights + 1.5 GB
TARGET_WALL_S = 240  # issue 20: BERT-base and ViT-B/16 auto builds <= 4 min each on 2 cores


@dataclass(frozen=True)
class ScaleModel:
    """A scale model: its spec and the build flags issue 20 names for it."""

    spec: str
    flags: tuple[str, ...]
    default: bool = True  # in the default run


MODELS = {
    "bert_base": ScaleModel("benchmarks/scale_models/bert_base.py:model", ("--precision", "auto")),
    "vit_b16": ScaleModel("benchmarks/scale_models/vit_b16.py:model", ("--precision", "auto", "--synthetic-calib")),
    "bert_wide": ScaleModel("benchmarks/scale_models/bert_wide.py:model",
                            ("--precision", "fp32,int8-dynamic,int4-weight", "--guard-seconds", "900"),
                            default=False),
}

def run_build(model: ScaleModel, out: Path, cache: Path, extra: list[str], log: Path) -> dict[str, Any]:
    """One cold ``optpipe build`` subprocess: wall seconds, peak RSS (MiB, the build's own), exit code."""
    command = [str(OPTPIPE), "build", model.spec, "--out", str(out), "--overwrite", "--cache-dir", str(cache),
               *model.flags, *extra]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    peak_file = log.with_suffix(".peak_kib")
    start = time.perf_counter()
    with open(log, "w") as handle:
        status = subprocess.call([sys.executable, "-c", PEAK_WRAPPER, str(peak_file), *command],
                                 stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    wall = time.perf_counter() - start
    peak_kib = int(peak_file.read_text()) if peak_file.is_file() else 0
    return {"command": "optpipe " + " ".join(command[1:]).replace(str(cache), "<empty cache>"),
            "exit_code": status, "wall_s": round(wall, 1), "peak_rss_mib": round(peak_kib / 1024)}


def run_verify(out: Path, log: Path) -> dict[str, Any]:
    """``optpipe verify OUT`` (hashes and parity again): its exit code and wall seconds."""
    start = time.perf_counter()
    with open(log, "w") as handle:
        status = subprocess.call([str(OPTPIPE), "verify", str(out)], stdout=handle, stderr=subprocess.STDOUT,
                                 cwd=ROOT)
    return {"exit_code": status, "wall_s": round(time.perf_counter() - start, 1),
            "tail": log.read_text(errors="replace").strip().splitlines()[-3:]}


def artifact_bytes(out: Path, relative: str | None) -> int | None:
    """A variant's artifact and its external-data files next to it."""
    if not relative or not (out / relative).is_file():
        return None
    path = out / relative
    return sum(p.stat().st_size for p in path.parent.iterdir()
               if p.is_file() and (p == path or (p.name.startswith(path.name + ".") and p.suffix in (".data", ".bin"))))


def read_build(out: Path) -> dict[str, Any]:
    """What report.json says: per pass seconds and peak RSS, the build's memory, each variant's verdict and size."""
    report = json.loads((out / "report.json").read_text())
    passes = [{"name": p["name"], "variant": p["variant"], "status": p["status"], "seconds": p["seconds"],
               "peak_rss_mb": p.get("peak_rss_mb")} for p in report["passes"]]
    variants = []
    for variant in report["variants"]:
        outputs = (variant.get("parity") or {}).get("outputs") or {}
        cosines = [o.get("cosine") for o in outputs.values() if o.get("cosine") is not None]
        variants.append({"precision": variant["precision"], "status": variant["status"],
                         "passed": variant.get("passed"), "verdict": variant.get("verdict"),
                         "cosine_min": min(cosines) if cosines else None,
                         "p50_ms": (variant.get("latency") or {}).get("p50_ms"),
                         "artifact": variant.get("artifact"),
                         "artifact_bytes": artifact_bytes(out, variant.get("artifact"))})
    selected = (report.get("selected") or {}).get("precision")
    return {"result": report["result"], "selected": selected, "memory": report.get("memory"), "passes": passes,
            "variants": variants}


def bench_model(name: str, work: Path, extra: list[str]) -> dict[str, Any]:
    """Build ``name`` cold, verify it, read its report; the RSS and time targets beside the numbers."""
    model = MODELS[name]
    out, cache = work / name, work / f"{name}-cache"
    print(f"[{name}] optpipe build {model.spec} {' '.join(model.flags)}", file=sys.stderr, flush=True)
    build = run_build(model, out, cache, extra, work / f"{name}.log")
    entry: dict[str, Any] = {"model": name, **build}
    if (out / "report.json").is_file():
        entry.update(read_build(out))
        entry["verify"] = run_verify(out, work / f"{name}.verify.log")
        weights = float((entry.get("memory") or {}).get("weights_mb") or 0) * (1 << 20)
        target = TARGET_WEIGHT_COPIES * weights + TARGET_FIXED_BYTES
        entry["rss_target_mib"] = round(target / (1 << 20))
        entry["rss_within_target"] = build["peak_rss_mib"] <= entry["rss_target_mib"]
    else:
        entry["log_tail"] = (work / f"{name}.log").read_text(errors="replace").strip().splitlines()[-5:]
        print(f"[{name}] exit {build['exit_code']}, no report:", *entry["log_tail"], sep="\n  ", file=sys.stderr)
    return entry


def _mib(value: Any) -> str:
    return f"{float(value):,.0f}" if isinstance(value, int | float) else "–"


def markdown(results: dict[str, Any]) -> str:
    """The README's tables: one line per model, then each model's passes (wall seconds and peak RSS)."""
    lines = ["| model | FP32 weights (MiB) | exit | verify | selected | wall (s) | peak RSS (MiB) | target (MiB) "
             "| within | artifacts (MB) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, entry in results["models"].items():
        sizes = ", ".join(f"{v['precision']} {v['artifact_bytes'] / 1e6:.0f}" for v in entry.get("variants", [])
                          if v.get("artifact_bytes"))
        lines.append(f"| {name} | {_mib((entry.get('memory') or {}).get('weights_mb'))} | {entry['exit_code']} | "
                     f"{(entry.get('verify') or {}).get('exit_code', '–')} | {entry.get('selected') or '–'} | "
                     f"{entry['wall_s']} | {_mib(entry['peak_rss_mib'])} | {_mib(entry.get('rss_target_mib'))} | "
                     f"{'yes' if entry.get('rss_within_target') else 'no'} | {sizes} |")
    for name, entry in results["models"].items():
        if not entry.get("passes"):
            continue
        lines += ["", f"{name}, per pass:", "", "| pass | variant | status | seconds | peak RSS (MiB) |",
                  "|---|---|---|---|---|"]
        lines += [f"| {p['name']} | {p['variant']} | {p['status']} | {p['seconds']:.1f} | {_mib(p['peak_rss_mb'])} |"
                  for p in entry["passes"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(n for n, m in MODELS.items() if m.default),
                        help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--fresh", action="store_true", help="drop earlier results instead of adding to them")
    parser.add_argument("extra", nargs="*", help="extra optpipe build flags (after --)")
    options = parser.parse_args()
    names = [n.strip() for n in options.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    if importlib.util.find_spec("transformers") is None:  # the scale models are transformers' BERT and ViT
        parser.error("the scale models need transformers: pip install -c constraints.txt -e '.[bench]'")
    results: dict[str, Any] = {"models": {}}
    if RESULTS.is_file() and not options.fresh:
        results = json.loads(RESULTS.read_text())
    with tempfile.TemporaryDirectory(prefix="optpipe-scale-") as tmp:
        for name in names:
            entry = bench_model(name, Path(tmp), list(options.extra))
            entry["host"] = {"cpus": os.cpu_count(), "load_1min": round(os.getloadavg()[0], 2),
                             "python": platform.python_version(), "measured": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                            time.gmtime())}
            results["models"][name] = entry
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))


if __name__ == "__main__":
    main()
