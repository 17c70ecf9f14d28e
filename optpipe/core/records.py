"""Typed records of a build: statuses, one result per variant, and the build record.

Why types: ``report.json`` is read back by ``optpipe engine`` (to finish a
split build), ``optpipe verify`` and the manifest. With dicts, each reader
re-parsed the same keys by hand; here :class:`VariantResult` and
:class:`BuildRecord` own their JSON form (``to_dict`` / ``from_dict``), and
:func:`optpipe.report.build_report.read_report` is the one reader of ``report.json``.
Field names in the JSON stay as they were; keys a newer writer added are
kept (``extra``) so a round trip loses nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from typing import Any

from optpipe.core.tensor_spec import DynamicDim, TensorSpec

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # pragma: no cover - exercised on 3.10 only

    class StrEnum(str, Enum):
        def __str__(self) -> str:
            return str(self.value)


class VariantStatus(StrEnum):
    """What happened to a variant: its engine was built, is pending (split build), or it was skipped."""

    BUILT = "built"
    PENDING = "pending"  # a split build: the engine is built later by `optpipe engine`
    SKIPPED = "skipped"  # the precision pass found nothing to lower, or an auto candidate not available here


class PassStatus(StrEnum):
    """What happened to one pass of one variant."""

    OK = "ok"
    FAILED = "failed"
    CACHED = "cached"  # replayed from the build cache
    SKIPPED = "skipped"  # a precision pass that found nothing to lower (its variant is skipped)


class _JsonRecord:
    """What the JSON records share: optional keys, keys kept as read, read access by JSON field name."""

    extra: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def _finish(self, out: dict[str, Any], **optional: Any) -> dict[str, Any]:
        """``out`` plus the ``optional`` keys that are set, over the keys kept from the file."""
        out.update({key: value for key, value in optional.items() if value is not None})
        return {**self.extra, **out}

    @classmethod
    def _unknown(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        """The keys of ``data`` this version does not know (kept, so a round trip loses nothing)."""
        known = {f.name for f in fields(cls)} - {"extra"}  # type: ignore[arg-type]  # subclasses are dataclasses
        return {key: value for key, value in data.items() if key not in known}

    # Read access by JSON field name, for scripts written against the dict form (``variant["passed"]``).
    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_dict().get(key, default)


@dataclass(frozen=True)
class CachedMeasurement:
    """A measurement (validate, benchmark) reused from the cache: when and where it was made, under which key."""

    measured_at: str | None
    host: dict[str, Any] | None
    key: str

    def to_dict(self) -> dict[str, Any]:
        return {"measured_at": self.measured_at, "host": self.host, "key": self.key}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CachedMeasurement:
        return cls(data.get("measured_at"), data.get("host"), str(data["key"]))


def _optional_int(value: Any) -> int | None:
    """An integer field read from JSON (None when absent)."""
    return None if value is None else int(value)


@dataclass(frozen=True)
class VariantResult(_JsonRecord):
    """One entry of ``report.variants``."""

    precision: str
    status: VariantStatus
    artifact: str | None = None  # the engine, relative to the build directory
    onnx: str | None = None  # the variant's ONNX, relative to the build directory
    passed: bool = False
    failures: tuple[str, ...] = ()
    parity: dict[str, Any] | None = None
    latency: dict[str, Any] | None = None
    torch_latency: dict[str, Any] | None = None
    speedup_vs_torch: float | None = None
    gpu_memory: dict[str, Any] | None = None
    memory: dict[str, Any] | None = None  # host RSS during the benchmark
    profile: dict[str, Any] | None = None  # the per-op profile (--profile)
    passes: dict[str, Any] = field(default_factory=dict)  # pass name -> metrics (not validate/benchmark)
    required: bool = True  # False for a candidate of --precision auto: its failure does not fail the build
    fallback: bool = False  # fp32 built because every requested variant was skipped
    reason: str | None = None  # why it was skipped
    accuracy: dict[str, Any] | None = None  # task accuracy on the labelled eval data, when given
    # Measurements reused from the cache (pass name -> when/where measured); absent = measured in this build.
    cached: dict[str, CachedMeasurement] = field(default_factory=dict)
    # Gates that could not judge (optpipe.compare.output_kinds). Never a pass: the variant's verdict is "unjudged"
    # (passed False) unless the build allowed it (--allow-unjudged: passed True, these kept as the record).
    unjudged: tuple[str, ...] = ()
    # Bytes on disk of the engine artifact and of the variant's ONNX, each with its external data files.
    size_bytes: int | None = None
    onnx_size_bytes: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know, kept as read

    @property
    def verdict(self) -> str:
        """``passed``, ``failed`` (a gate judged and failed), ``unjudged`` (none failed, one could not judge),
        or the status of a variant not validated here (``pending``, ``skipped``)."""
        if self.status is not VariantStatus.BUILT:
            return str(self.status)
        if self.passed:
            return "passed"
        return "unjudged" if self.unjudged and not self.failures else "failed"

    @property
    def counts_against_build(self) -> bool:
        """A failed, required, non-skipped variant fails the build."""
        return not self.passed and self.status is not VariantStatus.SKIPPED and self.required

    def with_failure(self, failure: str) -> VariantResult:
        return replace(self, failures=(*self.failures, failure), passed=False)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "precision": self.precision,
            "status": str(self.status),
            "artifact": self.artifact,
            "onnx": self.onnx,
            "passed": self.passed,
            "failures": list(self.failures),
            "parity": self.parity,
            "latency": self.latency,
            "torch_latency": self.torch_latency,
            "speedup_vs_torch": self.speedup_vs_torch,
            "gpu_memory": self.gpu_memory,
            "memory": self.memory,
            "profile": self.profile,
            "passes": self.passes,
            "required": self.required,
            "verdict": self.verdict,
            "unjudged": list(self.unjudged),
        }
        return self._finish(out, fallback=True if self.fallback else None, reason=self.reason, accuracy=self.accuracy,
                            cached={k: v.to_dict() for k, v in self.cached.items()} or None,
                            size_bytes=self.size_bytes, onnx_size_bytes=self.onnx_size_bytes)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VariantResult:
        """Read one variant; raises KeyError/TypeError/ValueError on a malformed entry."""
        return cls(
            precision=str(data["precision"]),
            status=VariantStatus(str(data.get("status") or VariantStatus.BUILT)),
            artifact=data.get("artifact"),
            onnx=data.get("onnx"),
            passed=bool(data.get("passed", False)),
            failures=tuple(str(f) for f in data.get("failures") or ()),
            parity=data.get("parity"),
            latency=data.get("latency"),
            torch_latency=data.get("torch_latency"),
            speedup_vs_torch=data.get("speedup_vs_torch"),
            gpu_memory=data.get("gpu_memory"),
            memory=data.get("memory"),
            profile=data.get("profile"),
            passes=dict(data.get("passes") or {}),
            required=bool(data.get("required", True)),
            fallback=bool(data.get("fallback", False)),
            reason=data.get("reason"),
            accuracy=data.get("accuracy"),
            cached={str(k): CachedMeasurement.from_dict(v) for k, v in (data.get("cached") or {}).items()},
            unjudged=tuple(str(u) for u in data.get("unjudged") or ()),
            size_bytes=_optional_int(data.get("size_bytes")),
            onnx_size_bytes=_optional_int(data.get("onnx_size_bytes")),
            extra={k: v for k, v in cls._unknown(data).items() if k != "verdict"},
        )


@dataclass(frozen=True)
class BenchmarkRecord(_JsonRecord):
    """``report.benchmark``: the build's ONE timing run, every built engine and PyTorch eager interleaved.

    Why one run: timed each beside its own PyTorch run, variants of one build got
    different denominators (PyTorch's median moved 330-455 ms between them under
    load) and selection could pick the slower artifact. Here every speedup divides
    the same baseline, measured in the same shuffled blocks as the engines.
    """

    inputs: dict[str, Any]  # what was timed and how (batch, threads, budget, seed, engine hashes): the cache key
    baseline: dict[str, Any] | None = None  # PyTorch eager's latency summary (report.baseline), once
    latency: dict[str, dict[str, Any]] = field(default_factory=dict)  # precision -> latency summary
    spread: dict[str, float] = field(default_factory=dict)  # runtime -> p90/p50
    drift: dict[str, float] = field(default_factory=dict)  # runtime -> slowest/fastest block median
    timer: str = "interleaved wall clock"
    peak_rss_mb: float | None = None  # process RSS peak while timing (every runtime in this process)
    warnings: tuple[str, ...] = ()
    cached: CachedMeasurement | None = None  # reused from the cache: when and where it was measured
    extra: dict[str, Any] = field(default_factory=dict)
    # The data's real lengths (token models): per bucket, every runtime and PyTorch eager on the same rows.
    serving: tuple[dict[str, Any], ...] = ()

    @property
    def stable(self) -> bool:
        """No stability warning: every spread and the baseline's drift within their limits."""
        return not self.warnings

    def speedup(self, precision: str) -> float | None:
        """PyTorch eager's p50 over ``precision``'s p50, both from this run."""
        engine = (self.latency.get(precision) or {}).get("p50_ms")
        torch = (self.baseline or {}).get("p50_ms")
        return float(torch) / float(engine) if engine and torch else None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "inputs": self.inputs, "baseline": self.baseline, "latency": self.latency, "spread": self.spread,
            "drift": self.drift, "timer": self.timer, "peak_rss_mb": self.peak_rss_mb,
            "stable": self.stable, "warnings": list(self.warnings), "serving": list(self.serving),
        }  # fmt: skip
        return self._finish(out, cached=self.cached.to_dict() if self.cached else None)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BenchmarkRecord:
        """Read the benchmark record; raises KeyError/TypeError/ValueError when malformed."""
        return cls(
            inputs=dict(data.get("inputs") or {}),
            baseline=data.get("baseline"),
            latency={str(k): dict(v) for k, v in (data.get("latency") or {}).items()},
            spread={str(k): float(v) for k, v in (data.get("spread") or {}).items()},
            drift={str(k): float(v) for k, v in (data.get("drift") or {}).items()},
            timer=str(data.get("timer") or "interleaved wall clock"),
            peak_rss_mb=data.get("peak_rss_mb"),
            warnings=tuple(str(w) for w in data.get("warnings") or ()),
            cached=CachedMeasurement.from_dict(data["cached"]) if data.get("cached") else None,
            extra={k: v for k, v in cls._unknown(data).items() if k not in ("stable", "cached", "serving")},
            serving=tuple(dict(bucket) for bucket in data.get("serving") or ()),
        )


@dataclass(frozen=True)
class HoldoutRecord:
    """``report.build.holdout``: which calibration rows were held out as parity rows (never calibrated on)."""

    source: str | None
    rows: int  # rows of the calibration data read
    heldout_rows: int
    calibration_rows: int
    rule: str  # how the rows were chosen (deterministic: a rebuild holds out the same rows)
    heldout_indices: tuple[int, ...] = ()
    # The held-out rows split (issue 17): guard rows the accuracy guard may use, test rows only the verdict sees.
    guard_indices: tuple[int, ...] = ()
    test_indices: tuple[int, ...] = ()
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "rows": self.rows, "heldout_rows": self.heldout_rows,
                "calibration_rows": self.calibration_rows, "rule": self.rule,
                "heldout_indices": list(self.heldout_indices), "guard_indices": list(self.guard_indices),
                "test_indices": list(self.test_indices), "seed": self.seed}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HoldoutRecord:
        def ints(key: str) -> tuple[int, ...]:
            return tuple(int(i) for i in data.get(key) or ())

        seed = data.get("seed")
        return cls(data.get("source"), int(data["rows"]), int(data["heldout_rows"]), int(data["calibration_rows"]),
                   str(data["rule"]), ints("heldout_indices"), ints("guard_indices"), ints("test_indices"),
                   None if seed is None else int(seed))


@dataclass(frozen=True)
class RowSet:
    """One role's golden rows in ``report.build.row_split``: how many, from where, in which cases."""

    rows: int
    sources: dict[str, int]  # rows by source: example, calibration, eval_data
    cases: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "sources": dict(self.sources), "cases": list(self.cases)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RowSet:
        return cls(int(data["rows"]), {str(k): int(v) for k, v in (data.get("sources") or {}).items()},
                   tuple(str(c) for c in data.get("cases") or ()))


@dataclass(frozen=True)
class RowSplitRecord:
    """``report.build.row_split``: which golden rows steered the accuracy guard and which only judged.

    ``shape``: the example and its resized copies (both); ``guard``: real rows the guard may tune on;
    ``test``: real rows only the final verdict saw (``eval_data()`` rows always are).
    """

    shape: RowSet
    guard: RowSet
    test: RowSet
    seed: int
    rule: str

    def to_dict(self) -> dict[str, Any]:
        return {"shape": self.shape.to_dict(), "guard": self.guard.to_dict(), "test": self.test.to_dict(),
                "seed": self.seed, "rule": self.rule}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RowSplitRecord:
        return cls(RowSet.from_dict(data["shape"]), RowSet.from_dict(data["guard"]), RowSet.from_dict(data["test"]),
                   int(data["seed"]), str(data["rule"]))


@dataclass(frozen=True)
class BuildRecord(_JsonRecord):
    """``report.build``: what ``optpipe engine`` and ``optpipe verify`` need to resume from the directory alone."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[str, ...]
    dynamic: tuple[DynamicDim, ...] = ()
    precisions: tuple[str, ...] = ()
    tolerances: dict[str, dict[str, float]] = field(default_factory=dict)
    # Each output's kind (given or inferred, compare.output_kinds): the gates that judged it; verify reuses them.
    output_kinds: dict[str, str] = field(default_factory=dict)
    onnx: str | None = None  # the shared simplified FP32 ONNX
    golden: str = "golden"
    trt: dict[str, Any] = field(default_factory=dict)  # TensorRT build options, reused by `optpipe engine`
    options: dict[str, Any] | None = None  # BuildOptions.to_dict() of the build
    split_environment: dict[str, Any] | None = None  # where the CPU stages of a split build ran
    holdout: HoldoutRecord | None = None  # calibration rows held out as golden rows
    row_split: RowSplitRecord | None = None  # golden rows by role: guard (steer) and test (judge only)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": list(self.outputs),
            "dynamic": [d.to_dict() for d in self.dynamic],
            "precisions": list(self.precisions),
            "tolerances": self.tolerances,
            "output_kinds": self.output_kinds,
            "onnx": self.onnx,
            "golden": self.golden,
            "trt": self.trt,
        }
        return self._finish(out, options=self.options, split_environment=self.split_environment,
                            holdout=self.holdout.to_dict() if self.holdout else None,
                            row_split=self.row_split.to_dict() if self.row_split else None)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BuildRecord:
        """Read the build record; raises KeyError/TypeError/ValueError/AssertionError when malformed."""
        return cls(
            inputs=tuple(TensorSpec.from_dict(item) for item in data["inputs"]),
            outputs=tuple(str(name) for name in data["outputs"]),
            dynamic=tuple(DynamicDim(str(d["name"]), int(d["min"]), int(d["opt"]), int(d["max"]))
                          for d in data.get("dynamic") or ()),
            precisions=tuple(str(p) for p in data.get("precisions") or ()),
            tolerances={str(k): dict(v) for k, v in (data.get("tolerances") or {}).items()},
            output_kinds={str(k): str(v) for k, v in (data.get("output_kinds") or {}).items()},
            onnx=data.get("onnx"),
            golden=str(data.get("golden") or "golden"),
            trt=dict(data.get("trt") or {}),
            options=data.get("options"),
            split_environment=data.get("split_environment"),
            holdout=HoldoutRecord.from_dict(data["holdout"]) if data.get("holdout") else None,
            row_split=RowSplitRecord.from_dict(data["row_split"]) if data.get("row_split") else None,
            extra=cls._unknown(data),
        )


@dataclass(frozen=True)
class MemoryRecord(_JsonRecord):
    """``report.memory``: the build's memory, next to each pass's ``peak_rss_mb`` in ``report.passes``.

    ``peak_rss_mb`` is the highest resident set sampled while the build ran (the model was loaded before);
    ``process_peak_rss_mb`` the process's own peak so far (``ru_maxrss``: what ``/usr/bin/time -v`` reports
    for a CLI build). ``estimate_mb`` is the up-front estimate the build was checked against ``limit_mb``
    with (``limit_source``: ``--max-rss`` or the memory this machine had available), from
    ``weights_mb`` (the model's FP32 weights). ``calib_rows``: rows per calibration run when the budget
    made calibration run in smaller chunks (None: the default chunking). ``torch_weights_paged_out_mb``: the
    PyTorch model's weights mapped from a file after the export (:mod:`optpipe.model.paged_weights`; 0: kept).
    """

    weights_mb: float
    estimate_mb: float
    limit_mb: float | None = None
    limit_source: str = ""
    peak_rss_mb: float | None = None
    process_peak_rss_mb: float | None = None
    calib_rows: int | None = None
    torch_weights_paged_out_mb: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"weights_mb": self.weights_mb, "estimate_mb": self.estimate_mb,
                               "limit_mb": self.limit_mb, "limit_source": self.limit_source,
                               "peak_rss_mb": self.peak_rss_mb, "process_peak_rss_mb": self.process_peak_rss_mb,
                               "torch_weights_paged_out_mb": self.torch_weights_paged_out_mb}
        return self._finish(out, calib_rows=self.calib_rows)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MemoryRecord:
        """Read the memory record; raises KeyError/TypeError/ValueError when malformed."""
        def number(key: str) -> float | None:
            value = data.get(key)
            return None if value is None else float(value)

        return cls(weights_mb=float(data["weights_mb"]), estimate_mb=float(data["estimate_mb"]),
                   limit_mb=number("limit_mb"), limit_source=str(data.get("limit_source") or ""),
                   peak_rss_mb=number("peak_rss_mb"), process_peak_rss_mb=number("process_peak_rss_mb"),
                   calib_rows=int(data["calib_rows"]) if data.get("calib_rows") is not None else None,
                   torch_weights_paged_out_mb=float(data.get("torch_weights_paged_out_mb") or 0.0),
                   extra=cls._unknown(data))
