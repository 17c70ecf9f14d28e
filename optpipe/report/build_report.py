"""The build report: what ran, what it measured, and the exit code.

As in Black, the report owns the exit code and the CLI only prints it. The
JSON schema is versioned (``schema``); fields are only ever added within a
major version so CI scripts that read ``report.json`` keep working.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from optpipe.core.artifact import write_bytes_atomic
from optpipe.core.errors import EXIT_ENVIRONMENT, EXIT_GATE_FAILED, EXIT_OK, EXIT_UNJUDGED
from optpipe.core.machine import cpu_name, package_version
from optpipe.core.records import (
    BenchmarkRecord,
    BuildRecord,
    MemoryRecord,
    PassStatus,
    VariantResult,
    VariantStatus,
)
from optpipe.infra.pipeline import PassRecord

SCHEMA = "optpipe.report/1"


def environment() -> dict[str, Any]:
    """Versions and host facts that explain a report's numbers."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "optpipe": package_version("optpipe"),
        "torch": package_version("torch"),
        "onnx": package_version("onnx"),
        "onnxruntime": package_version("onnxruntime"),
        "onnxslim": package_version("onnxslim"),
        "tensorrt": package_version("tensorrt"),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "executable": sys.executable,
    }


@dataclass
class Report:
    """Everything a build decided and measured; serialised to ``report.json``."""

    target: str
    model: str = ""
    status: str = "complete"  # "complete" | "split" (stopped before the engine, exit 3)
    passes: list[PassRecord] = field(default_factory=list)
    variants: list[VariantResult] = field(default_factory=list)
    baseline: dict[str, Any] | None = None  # PyTorch eager's latency, from the one benchmark run
    benchmark: BenchmarkRecord | None = None  # that run: every engine and the baseline, interleaved
    selected: dict[str, Any] | None = None
    accuracy: dict[str, Any] | None = None  # FP32 PyTorch accuracy on the labelled eval data
    warnings: list[str] = field(default_factory=list)
    next_step: str | None = None
    build: BuildRecord | None = None
    provenance: dict[str, Any] | None = None  # files, call, times, versions (optpipe.report.provenance)
    sweep: dict[str, Any] | None = None  # batch x threads latency/throughput (optpipe.builder.sweep, versioned)
    memory: MemoryRecord | None = None  # the build's peak RSS, its up-front estimate and limit (per pass: passes)
    environment: dict[str, Any] = field(default_factory=environment)
    out_dir: Path | None = None

    @property
    def passed(self) -> bool:
        """Every required variant passed and at least one passed (a split build has not passed yet).

        A skipped variant (nothing to lower) is not a failure, and neither is a
        rejected candidate of ``--precision auto`` (``required`` False).
        """
        return (
            self.status == "complete"
            and any(v.passed for v in self.variants)
            and not any(v.counts_against_build for v in self.variants)
        )

    @property
    def result(self) -> str:
        """``PASSED``, ``FAILED`` (a gate judged and failed), ``UNJUDGED`` (no gate failed, but one that decides
        the verdict could not judge: not evidence the artifact is right) or ``SPLIT`` (not finished here)."""
        if self.status == "split":
            return "SPLIT"
        if self.passed:
            return "PASSED"
        deciding = [v for v in self.variants if v.counts_against_build] or [
            v for v in self.variants if v.status is VariantStatus.BUILT and not v.passed]
        return "UNJUDGED" if deciding and all(v.verdict == "unjudged" for v in deciding) else "FAILED"

    @property
    def exit_code(self) -> int:
        return {"SPLIT": EXIT_ENVIRONMENT, "PASSED": EXIT_OK, "UNJUDGED": EXIT_UNJUDGED}.get(self.result,
                                                                                           EXIT_GATE_FAILED)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "model": self.model,
            "target": self.target,
            "status": self.status,
            "passed": self.passed,
            "result": self.result,
            "exit_code": self.exit_code,
            "environment": self.environment,
            "passes": [record.to_dict() for record in self.passes],
            "baseline": self.baseline,
            "benchmark": self.benchmark.to_dict() if self.benchmark is not None else None,
            "variants": [v.to_dict() for v in self.variants],
            "selected": self.selected,
            "accuracy": self.accuracy,
            "warnings": self.warnings,
            "next_step": self.next_step,
            "build": self.build.to_dict() if self.build is not None else None,
            "provenance": self.provenance,
            "sweep": self.sweep,
            "memory": self.memory.to_dict() if self.memory is not None else None,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False, default=str)

    def write(self, path: Path) -> None:
        """The one writer of ``report.json`` (to a temporary name, then renamed)."""
        write_bytes_atomic(path, (self.to_json() + "\n").encode())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Report:
        """A Report from its JSON form; raises KeyError/TypeError/ValueError/AssertionError when malformed."""
        names = {f.name for f in fields(PassRecord)}
        records = [PassRecord(**{k: v for k, v in r.items() if k in names}) for r in data.get("passes") or []]
        for record in records:
            record.status = PassStatus(record.status)
        build, benchmark = data.get("build"), data.get("benchmark")
        return cls(
            target=str(data["target"]),
            model=str(data.get("model", "")),
            status=str(data.get("status", "complete")),
            passes=records,
            variants=[VariantResult.from_dict(v) for v in data.get("variants") or []],
            baseline=data.get("baseline"),
            benchmark=BenchmarkRecord.from_dict(benchmark) if isinstance(benchmark, Mapping) else None,
            selected=data.get("selected"),
            accuracy=data.get("accuracy"),
            warnings=[str(w) for w in data.get("warnings") or []],
            next_step=data.get("next_step"),
            build=BuildRecord.from_dict(build) if isinstance(build, Mapping) else None,
            provenance=data.get("provenance"),
            sweep=dict(data["sweep"]) if isinstance(data.get("sweep"), Mapping) else None,
            memory=MemoryRecord.from_dict(data["memory"]) if isinstance(data.get("memory"), Mapping) else None,
            environment=dict(data.get("environment") or {}),
        )

    def metrics(self) -> dict[str, float]:
        """A flat ``{"fp32.p50_ms": ..., "int8.cosine_min.logits": ...}`` view (see :mod:`optpipe.report.metrics`)."""
        from optpipe.report.metrics import flat_metrics

        return flat_metrics(self.to_dict(), self.out_dir)

    def summary(self) -> str:
        """A fixed-width table for the console."""
        lines = [f"optpipe build: {self.model}  target={self.target}"]
        if self.baseline:
            lines.append(
                f"  torch eager: p50 {self.baseline['p50_ms']:.3f} ms at batch {self.baseline['batch']}, "
                f"{self.baseline['threads']} threads"
            )
        reference = (self.accuracy or {}).get("torch_fp32")
        if reference:
            lines.append(
                f"  torch fp32 accuracy: {reference['accuracy']:.2f}% on {reference['samples']} labelled samples"
            )
        header = f"  {'variant':<12} {'parity':<7} {'worst cosine':>12} {'max abs':>10} {'top-1':>7} "
        header += f"{'p50 ms':>9} {'speedup':>8}  artifact"
        lines.append(header)
        for variant in (v.to_dict() for v in self.variants):
            outputs = (variant.get("parity") or {}).get("outputs", {})  # None until the engine is validated
            cosine = f"{min(o['cosine'] for o in outputs.values()):.6f}" if outputs else "-"
            max_abs = f"{max(o['max_abs'] for o in outputs.values()):.3g}" if outputs else "-"
            top1s = [o["top1_agreement"] for o in outputs.values() if o.get("top1_agreement") is not None]
            top1 = f"{min(top1s):.3f}" if top1s else "-"
            latency = variant.get("latency") or {}
            p50 = f"{latency['p50_ms']:.3f}" if latency else "-"
            speedup = variant.get("speedup_vs_torch")
            speedup_text = f"{speedup:.2f}x" if speedup else "-"
            verdict = "pass" if variant["passed"] else "FAIL"
            if variant.get("status") in ("pending", "skipped"):
                verdict = variant["status"]
            elif variant.get("verdict") == "unjudged":
                verdict = "UNJUDG"  # no gate failed, one could not judge: not a pass
            elif not variant["passed"] and not variant.get("required", True):
                verdict = "reject"  # a candidate of --precision auto that failed a gate
            lines.append(
                f"  {variant['precision']:<12} {verdict:<7} {cosine:>12} {max_abs:>10} {top1:>7} "
                f"{p50:>9} {speedup_text:>8}  {variant.get('artifact') or '-'}"
            )
            lines.extend(_gate_lines(outputs))
            lines.extend(_row_split_lines(outputs))
            accuracy = variant.get("accuracy")
            if accuracy:
                lines.append(
                    f"      accuracy {accuracy['accuracy']:.2f}% (drop {accuracy['drop_points']:+.2f} points "
                    "vs torch fp32)"
                )
            if variant.get("status") == "skipped":
                lines.append(f"      - {variant.get('reason')}")
            for failure in variant.get("failures", []):
                lines.append(f"      ! {failure}")
            for line in variant.get("unjudged") or []:
                lines.append(f"      ? {line}")
            if variant.get("unjudged"):
                lines.append(f"      ? {UNJUDGED_ADVICE}")
        for bucket in self.benchmark.serving if self.benchmark is not None else ():
            speedups = ", ".join(f"{name} {x:.2f}x" for name, x in (bucket.get("speedup_vs_torch") or {}).items())
            lines.append(f"  at real length {bucket['length']} ({bucket['bucket']}), batch {bucket['batch']}: "
                         f"{speedups or '-'} vs PyTorch eager at the same length")
        if self.selected:
            lines.append(f"  selected: {self.selected['precision']} ({self.selected['reason']})")
            for precision, why in (self.selected.get("rejected") or {}).items():
                lines.append(f"    not {precision}: {why}")
        for warning in self.warnings:
            lines.append(f"  warning: {warning}")
        if self.status == "split":
            lines.append(f"  not finished here: {self.next_step}")
        else:
            allowed = " (unjudged gates allowed by --allow-unjudged)" if self.passed and any(
                v.unjudged for v in self.variants) else ""
            lines.append(f"  result: {self.result}{allowed} (exit {self.exit_code})")
        return "\n".join(lines)


class ReportUnreadable(ValueError):
    """``report.json`` is missing, not JSON, of another schema or malformed; the message says which."""


def read_report(path: str | Path) -> Report:
    """The one reader of ``report.json``. Raises :class:`ReportUnreadable` with a one-line reason."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportUnreadable(f"no {path.name}") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ReportUnreadable(f"cannot read {path}: {error}") from None
    if not isinstance(data, dict):
        raise ReportUnreadable("not a JSON object")
    if str(data.get("schema", "")).split("/")[0] != SCHEMA.split("/")[0]:
        raise ReportUnreadable("unknown schema")
    try:
        return Report.from_dict(data)
    except (KeyError, TypeError, ValueError, AssertionError) as error:
        raise ReportUnreadable(f"malformed record ({type(error).__name__}: {error})") from None


def _row_split_lines(outputs: dict[str, Any]) -> list[str]:
    """One line per output judged on test rows: its figures on the guard's rows and on the rows it never saw."""
    lines = []
    for name, record in outputs.items():
        guard, test = record.get("guard_rows"), record.get("test_rows")
        if not guard or not test:
            continue
        lines.append(f"      '{name}': guard rows {guard['samples']} cosine {guard['cosine']:.6f} "
                     f"({'pass' if guard['passed'] else 'FAIL'}); test rows {test['samples']} (never seen by the "
                     f"guard) cosine {test['cosine']:.6f} ({'pass' if test['passed'] else 'FAIL'})")
    return lines


#: What makes an unjudged gate judge. Each route is real: eval_data() rows and rows held out of --calib-data
#: become golden rows (optpipe.compare.golden, optpipe.precision.holdout); a declared kind picks the gates.
UNJUDGED_ADVICE = (
    "to judge it, give more rows: eval_data() in the model file (its inputs become golden rows), or --calib-data "
    "FILE with >= 64 rows (32 are held out as golden rows, never calibrated on); or declare what the output "
    "means (--output-kind NAME=KIND); or accept the artifact unjudged with --allow-unjudged")


def _gate_lines(outputs: dict[str, Any]) -> list[str]:
    """One line per output: its kind and every gate, with what it judged and over how many units."""
    from optpipe.compare.kind_gates import Gate

    lines = []
    for name, record in outputs.items():
        gates = [Gate(**gate) for gate in record.get("gates") or ()]
        if not gates:
            continue
        parts = [gate.describe() + ("" if gate.judged else " (UNJUDGED)") for gate in gates]
        lines.append(f"      '{name}' ({record.get('kind')}): " + "; ".join(parts))
    return lines
