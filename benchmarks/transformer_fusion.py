"""MiniLM's variants at the real sentences' own lengths: size, per-row cosine, speed vs PyTorch eager (issue 19).

Reads a finished ``optpipe build`` of ``benchmarks/real_models/minilm.py:model`` whose sequence axis is
dynamic (the default for token inputs) and measures every built variant outside optpipe:

* size: the variant's portable ONNX and its engine file (MB);
* accuracy: per-row cosine against FP32 PyTorch over the 40 held-out real sentences, each fed alone at
  its own length (no padding), min and mean;
* speed: batch 1, 1 thread, every sentence at its own length, the engine and PyTorch eager fed the same
  rows, interleaved in one run (:func:`optpipe.runtime.timing.budgeted_latency`): median ms and the ratio.

Run::

    .venv/bin/optpipe build benchmarks/real_models/minilm.py:model --precision auto \\
        --dynamic batch=1:8:64 --threads 1 --tolerance '*:min_row_cosine=0.99' --out build/minilm
    .venv/bin/python benchmarks/transformer_fusion.py build/minilm --profile

Prints a Markdown table and writes ``benchmarks/results/transformer_fusion.json``; ``--profile`` adds each
engine's per-op-type time split at those lengths (ONNX Runtime's profiler), to say what limits it.

``--static BUILD`` adds a ``--static-seq`` build's selected artifact (issue 19's "today's static-128
artifact") to the same timed run, fed the same sentences padded to 128 tokens as it requires, so the
``vs static-128`` column is the dynamic artifact's speed-up over it at real lengths, measured side by side.
``--extra NAME=ONNX`` adds any other model file (a probe: another quantization of the same graph) the same way.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
#: The name of a ``--static-seq`` build's selected artifact in the table (fed rows padded to 128 tokens).
STATIC = "static-128"
sys.path.insert(0, str(ROOT / "benchmarks" / "real_models"))


def sentence_rows() -> list[dict[str, np.ndarray]]:
    """The 40 held-out sentences, tokenized one by one at their own lengths (batch 1, int64)."""
    import minilm
    import sentences

    tokenizer = minilm._tokenizer()
    rows = []
    for text in sentences.eval_sentences():
        batch = tokenizer([text], truncation=True, max_length=minilm.SEQ_LEN, return_tensors="np")
        rows.append({name: np.asarray(batch[name], dtype=np.int64) for name in minilm.INPUT_NAMES})
    return rows


def padded_rows() -> list[dict[str, np.ndarray]]:
    """The same 40 sentences one by one, padded to 128 tokens: what a ``--static-seq`` artifact must be fed."""
    import minilm
    import sentences

    return [minilm.encode([text]) for text in sentences.eval_sentences()]


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def op_split(engine: Path, rows: list[dict[str, np.ndarray]], top: int = 8) -> list[dict[str, Any]]:
    """Where the engine's time goes at the sentences' own lengths (1 thread): op types, ms per sentence, share.

    ONNX Runtime's profiler (:func:`optpipe.runtime.op_profile.profile_onnx`), every sentence twice; its
    per-node overhead inflates small ops, so the shares say which op dominates, not the latency.
    """
    from optpipe.runtime.op_profile import profile_onnx

    profile = profile_onnx(engine, rows, runs=2 * len(rows), threads=1)
    return [{"op_type": o.op_type, "nodes_per_run": round(o.nodes / profile.runs, 1),
             "ms_per_sentence": round(o.total_ms / profile.runs, 3), "percent": round(o.percent, 1)}
            for o in profile.op_types[:top]]  # fmt: skip


def _engine_entry(engine: Path, rows: list[dict[str, np.ndarray]], ref: list[np.ndarray],
                  profile: bool) -> tuple[dict[str, Any], Any]:
    """Size, per-row cosine (and op split) of one engine fed ``rows``, and the call that times it."""
    session = _session(engine)
    got = [session.run(None, r)[0][0] for r in rows]
    cos = [float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) for a, b in zip(ref, got, strict=True)]
    entry: dict[str, Any] = {"engine_mb": round(sum(f.stat().st_size for f in _model_files(engine)) / 1e6, 1),
                             "cosine_min": round(min(cos), 5), "cosine_mean": round(float(np.mean(cos)), 5)}
    if profile:
        entry["op_split"] = op_split(engine, rows)
    return entry, lambda: [session.run(None, r) for r in rows]


def _model_files(path: Path) -> list[Path]:
    """A model file and its external data file, if it has one (its size is both)."""
    data = path.with_name(f"{path.name}.data")
    return [path, data] if data.exists() else [path]


def _variant_entry(build: Path, variant: dict[str, Any]) -> dict[str, Any]:
    """What the build's report says of a variant: gate, sizes, fused ops, the nodes the guard kept."""
    entry: dict[str, Any] = {"status": variant.get("status"), "passed": variant.get("passed"),
                             "failures": variant.get("failures")}  # fmt: skip
    if variant.get("onnx"):
        entry["onnx_mb"] = round(sum(f.stat().st_size for f in _model_files(build / variant["onnx"])) / 1e6, 1)
    passes = variant.get("passes", {})
    ops = passes.get("fuse-transformer", {}).get("fused")
    if ops:
        entry["fused_ops"] = ops
    quantized = passes.get("int8-dynamic", {})
    entry["kept_nodes"] = [k["node"] for k in quantized.get("kept_nodes", [])]
    if quantized.get("kept_as"):
        entry["kept_as"] = quantized["kept_as"]
    return entry


def measure(build: Path, seconds: float, profile: bool = False, static: Path | None = None,
            extra: dict[str, Path] | None = None) -> dict[str, Any]:
    """Every built variant of ``build``: sizes, per-row cosine, batch-1 latency vs eager at real lengths.

    ``static``: a ``--static-seq`` build whose selected artifact is timed in the same run on the sentences padded
    to 128 (``static-128``); ``extra``: more model files by name, fed the sentences at their own lengths.
    """
    import minilm
    import torch

    from optpipe.runtime.timing import budgeted_latency

    torch.set_num_threads(1)
    report = json.loads((build / "report.json").read_text())
    rows = sentence_rows()
    with torch.inference_mode():
        ref = [minilm.model(*(torch.from_numpy(r[n]) for n in minilm.INPUT_NAMES)).numpy()[0] for r in rows]

    def eager() -> object:
        with torch.inference_mode():
            return [minilm.model(*(torch.from_numpy(r[n]) for n in minilm.INPUT_NAMES)) for r in rows]

    lengths = [int(r["input_ids"].shape[1]) for r in rows]
    result: dict[str, Any] = {"rows": len(rows), "lengths": {"min": min(lengths), "max": max(lengths),
                              "median": float(np.median(lengths))}, "selected": report.get("selected"),
                              "variants": {}}  # fmt: skip
    calls: dict[str, Any] = {"torch": eager}
    engines: list[tuple[str, Path, list[dict[str, np.ndarray]]]] = []
    for variant in report["variants"]:
        result["variants"][variant["precision"]] = _variant_entry(build, variant)
        if variant.get("artifact"):
            engines.append((variant["precision"], build / variant["artifact"], rows))
    if static is not None:
        chosen = json.loads((static / "report.json").read_text()).get("selected") or {}
        if chosen.get("artifact"):
            result["variants"][STATIC] = {"status": "built", "selected_in_its_build": chosen.get("precision")}
            engines.append((STATIC, static / chosen["artifact"], padded_rows()))
    for name, path in (extra or {}).items():
        result["variants"][name] = {"status": "extra", "path": str(path)}
        engines.append((name, path, rows))
    for name, path, feed in engines:
        entry, calls[name] = _engine_entry(path, feed, ref, profile)
        result["variants"][name].update(entry)
    times = budgeted_latency(calls, seconds=seconds, warmup=2, min_calls=5, progress=lambda *_: None)
    torch_ms = float(np.median(times["torch"])) / len(rows)
    result["torch_ms_per_sentence"] = round(torch_ms, 3)
    static_ms = float(np.median(times[STATIC])) / len(rows) if STATIC in times else None
    for name, per_call in times.items():
        if name == "torch":
            continue
        ms = float(np.median(per_call)) / len(rows)
        result["variants"][name].update(ms_per_sentence=round(ms, 3), speedup_vs_eager=round(torch_ms / ms, 2))
        if static_ms is not None:
            result["variants"][name]["speedup_vs_static128"] = round(static_ms / ms, 2)
    return result


def table(result: dict[str, Any]) -> str:
    lines = ["| variant | gate | ONNX MB | engine MB | cos min / mean (40 rows) | ms/sentence | vs eager "
             "| vs static-128 |",
             "|---|---|---|---|---|---|---|---|"]
    selected = (result.get("selected") or {}).get("precision")
    for name, v in result["variants"].items():
        gate = "selected" if name == selected else "pass" if v.get("passed") else (
            "skipped" if v.get("status") == "skipped" else v["status"] if v.get("status") in ("built", "extra")
            else "fail")
        lines.append(f"| {name} | {gate} | {v.get('onnx_mb', '-')} | {v.get('engine_mb', '-')} | "
                     f"{v.get('cosine_min', '-')} / {v.get('cosine_mean', '-')} | {v.get('ms_per_sentence', '-')} | "
                     f"{v.get('speedup_vs_eager', '-')}x | {v.get('speedup_vs_static128', '-')}x |")  # fmt: skip
    lines.append(f"| PyTorch eager | | | | | {result['torch_ms_per_sentence']} | 1x | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build", type=Path, help="a finished optpipe build of minilm.py:model (dynamic seq axis)")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per runtime")
    parser.add_argument("--profile", action="store_true", help="add each engine's per-op-type time split")
    parser.add_argument("--static", type=Path, default=None,
                        help="a --static-seq build of minilm.py:model: its selected artifact, fed 128-token rows")
    parser.add_argument("--extra", action="append", default=[], metavar="NAME=ONNX",
                        help="another model file to time at the sentences' own lengths (repeatable)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "transformer_fusion.json")
    args = parser.parse_args()
    extra = {}
    for item in args.extra:
        name, _, path = item.partition("=")
        if not name or not path or not Path(path).is_file():
            parser.error(f"--extra wants NAME=ONNX with an existing model file, got {item!r}")
        extra[name] = Path(path)
    result = measure(args.build, args.seconds, args.profile, args.static, extra)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    for name, variant in result["variants"].items():
        if variant.get("op_split"):
            print(f"{name}: " + ", ".join(f"{o['op_type']} {o['percent']}%" for o in variant["op_split"]))


if __name__ == "__main__":
    main()
