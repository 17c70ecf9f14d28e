"""The build plan (which variants, each one's pipeline) and the one loop that runs it.

Why one loop: ``optpipe build`` and ``optpipe engine`` (finishing a split
TensorRT build on the GPU machine) run the same variant pipelines - engine,
validate, benchmark - and must record them the same way. Both make a
:class:`BuildPlan` first (so a mis-assembled pipeline or a bad option fails
before any work) and then call :func:`run_plan`, which runs each variant,
turns a precision pass's "nothing to lower" into a skipped variant, builds
fp32 as the fallback when every requested variant was skipped, applies the
accuracy check and returns one typed :class:`~optpipe.core.records.VariantResult`
per variant.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from optpipe.builder import pass_configs
from optpipe.builder.options import BuildOptions
from optpipe.core.artifact import Artifact, ArtifactKind
from optpipe.core.errors import PassError, UserInputError
from optpipe.core.memory import RssSampler, mib
from optpipe.core.precisions import FUSED_SUFFIX, PRECISIONS, base_precision
from optpipe.core.records import CachedMeasurement, PassStatus, VariantResult, VariantStatus
from optpipe.core.tensor_spec import DynamicDim, TensorSpec
from optpipe.infra.pass_base import BuildContext, Pass
from optpipe.infra.pass_options import apply_pass_options
from optpipe.infra.pipeline import PASS_RSS_INTERVAL_S, Instrument, PassRecord, Pipeline
from optpipe.report.build_report import Report
from optpipe.report.metrics import artifact_size
from optpipe.runtime.target import Target


class ProgressInstrument:
    """Prints one line per pass: ``[variant] pass ... done in 1.2s``."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self.started: dict[str, float] = {}

    def before_pass(self, pass_: Pass, artifact: Artifact, ctx: BuildContext) -> None:
        self.started[pass_.name] = time.perf_counter()
        self.log(f"  -> {pass_.name}: {pass_.description}")
        return None

    def after_pass(self, pass_: Pass, artifact: Artifact, result: Any, ctx: BuildContext) -> None:
        seconds = time.perf_counter() - self.started.get(pass_.name, time.perf_counter())
        self.log(f"     {pass_.name} done in {seconds:.2f}s")


def precision_pass(precision: str, target: Target, options: BuildOptions) -> Pass | None:
    """The pass that lowers the simplified FP32 ONNX to ``precision`` (None for fp32)."""
    if precision == "fp32":
        return None
    if precision == "fp16":
        return pass_configs.fp16_pass(options)
    if precision == "int8":
        return pass_configs.int8_pass(options, target)
    if precision == "int8-dynamic":
        return pass_configs.int8_dynamic_pass(options, target)
    if precision == "int4-weight":
        return pass_configs.int4_weight_pass(options, target)
    raise UserInputError(f"unknown precision '{precision}'; choose from {', '.join(PRECISIONS)}")


def variant_passes(precision: str, target: Target, options: BuildOptions, engine: bool,
                   lower: bool = True) -> list[Pass]:
    """Precision pass (if ``lower``), then engine and validate when the engine can be built.

    The benchmark is not a step of a variant: :func:`run_plan` times every built engine in one run
    (:func:`benchmark_step`).
    """
    from optpipe.infra.registry import pre_engine_passes
    from optpipe.passes.validate import ValidateConfig, ValidatePass

    passes: list[Pass] = []
    if lower and precision.endswith(FUSED_SUFFIX):  # a fused variant: fusions first, then its precision
        passes.append(pass_configs.fuse_transformer_pass(options, target))
    lowering = precision_pass(base_precision(precision), target, options) if lower else None
    if lowering is not None:
        passes.append(lowering)
    passes.extend(pre_engine_passes(target))
    if engine:
        passes.append(pass_configs.engine_pass(target, options))
        passes.append(ValidatePass(ValidateConfig(**options.gate_fields())))
        if options.profile:  # its own session: the profiler's overhead is never in the benchmark's timings
            from optpipe.passes.profile import ProfilePass

            passes.append(ProfilePass())
    return passes


def benchmark_step(options: BuildOptions) -> Any:
    """The build's one benchmark (a :class:`~optpipe.passes.benchmark.BenchmarkPass`), or None (--no-benchmark)."""
    if not options.benchmark.enabled:
        return None
    from optpipe.passes.benchmark import BenchmarkConfig, BenchmarkPass

    bench = options.benchmark
    step = BenchmarkPass(BenchmarkConfig(batch=bench.batch, seconds=bench.seconds, warmup=bench.warmup,
                                         min_calls=bench.min_calls))
    apply_pass_options([step], options.pass_options)
    return step


@dataclass(frozen=True)
class VariantPlan:
    """One variant to run: its precision, its (kind-checked) pipeline and how its result counts."""

    precision: str
    pipeline: Pipeline
    required: bool = True  # False for a candidate of --precision auto
    fallback: bool = False  # fp32 built only because every requested variant was skipped
    # --precision auto: built only when this (fused) twin did not pass its gates (selection.unfused_twins)
    unless_passed: str | None = None


@dataclass
class BuildPlan:
    """Every variant pipeline of a build, assembled before the first pass runs."""

    variants: list[VariantPlan]
    engine: bool  # whether engines are built here (False: a split build stops before them)
    fallback: VariantPlan | None = None
    unavailable: dict[str, str] = field(default_factory=dict)  # auto candidates this build cannot make
    benchmark: Any = None  # a BenchmarkPass run once over every built engine (None: --no-benchmark)

    def pipelines(self) -> list[Pipeline]:
        return [v.pipeline for v in self.variants] + ([self.fallback.pipeline] if self.fallback else [])


def plan_variants(precisions: Sequence[str], target: Target, options: BuildOptions, engine: bool) -> BuildPlan:
    """The variant pipelines of ``optpipe build``: one per precision, plus the fp32 fallback when fp32 is not asked.

    Under ``--precision auto`` a candidate this build cannot make (int8 without calibration data) is
    recorded as unavailable; an explicitly requested one is the user's error; an unfused candidate with a fused
    twin is built only when that twin does not pass (:func:`~optpipe.builder.selection.unfused_twins`).
    """
    from optpipe.builder.selection import unfused_twins

    plan = BuildPlan([], engine, benchmark=benchmark_step(options) if engine else None)
    twins = unfused_twins(precisions) if options.auto else {}
    for precision in precisions:
        try:
            pipeline = Pipeline(variant_passes(precision, target, options, engine), variant=precision)
        except UserInputError as error:
            if not options.auto:
                raise
            plan.unavailable[precision] = f"not a candidate here: {error}"
            continue
        plan.variants.append(VariantPlan(precision, pipeline, required=not options.auto,
                                         unless_passed=twins.get(precision)))
    if not options.auto and "fp32" not in precisions:
        pipeline = Pipeline(variant_passes("fp32", target, options, engine), variant="fp32")
        plan.fallback = VariantPlan("fp32", pipeline, fallback=True)
    for pipeline in plan.pipelines():
        pass_configs.store_weights(pipeline.passes, options)
        apply_pass_options(pipeline.passes, options.pass_options)
    return plan


def _relative(path: Path | None, root: Path) -> str | None:
    return str(path.relative_to(root)) if path is not None else None


def variant_result(precision: str, final: Artifact, records: Sequence[PassRecord], root: Path,
                   engine_built: bool, require_judged: bool = True) -> VariantResult:
    """One entry of ``report.variants`` from the variant pipeline's records.

    Passed: no gate that judged failed and, when ``require_judged`` (the default), every gate judged: a
    gate that could not judge is never counted as a pass without the user's say-so (--allow-unjudged).
    """
    metrics = {record.name: record.metrics for record in records}
    parity = metrics.get("validate", {}).get("parity")
    unjudged = tuple(parity.get("unjudged") or ()) if parity else ()
    bench = metrics.get("benchmark", {})
    engine = final.kind is ArtifactKind.ENGINE
    onnx_path = final.extra.get("source_onnx") if engine else final.path
    artifact = _relative(final.path, root) if engine else None
    onnx = _relative(Path(str(onnx_path)), root) if onnx_path else None
    return VariantResult(
        precision=precision,
        status=VariantStatus.BUILT if engine_built else VariantStatus.PENDING,
        artifact=artifact,
        onnx=onnx,
        size_bytes=artifact_size(root, artifact),
        onnx_size_bytes=artifact_size(root, onnx),
        passed=bool(parity and parity["passed"]) and not (unjudged and require_judged),
        failures=tuple(parity["failures"]) if parity else (),
        unjudged=unjudged,
        parity=parity,
        latency=bench.get("latency"),
        torch_latency=bench.get("torch_latency"),
        speedup_vs_torch=bench.get("speedup_vs_torch"),
        gpu_memory=bench.get("gpu_memory"),
        memory=bench.get("memory"),
        profile=metrics.get("profile", {}).get("profile"),
        passes={r.name: r.metrics for r in records if r.name not in ("validate", "benchmark", "profile")},
        cached={name: CachedMeasurement.from_dict(metrics[name]["cached"]) for name in ("validate", "benchmark")
                if "cached" in metrics.get(name, {})},
    )


@dataclass
class PlanRun:
    """What :func:`run_plan` needs besides the plan: where, with what, and how to record."""

    ctx: BuildContext
    report: Report
    instruments: Sequence[Instrument]
    source: Callable[[str], Artifact]  # the input artifact of a variant, by precision
    accuracy: Any = None  # an optpipe.compare.task_accuracy.AccuracyCheck, or None
    runner: Callable[[Artifact], Any] | None = None  # the runner the accuracy check uses
    engines: dict[str, Artifact] = field(default_factory=dict)  # each variant's built engine, for the benchmark
    require_judged: bool = True  # a gate that could not judge fails the variant's verdict (UNJUDGED), not passes


def _run_variant(variant: VariantPlan, run: PlanRun, engine: bool, fp32: str | None) -> VariantResult:
    """Run one variant's pipeline; ``fp32``: the build's FP32 variant a skipped one points to (None: none)."""
    from optpipe.builder.selection import skipped_variant
    from optpipe.precision import VariantSkipped

    passes = run.report.passes
    start = len(passes)
    try:
        final = variant.pipeline.run(run.source(variant.precision), run.ctx, passes, run.instruments)
    except PassError as error:  # a precision pass with nothing to lower skips its variant
        if not isinstance(error.cause, VariantSkipped):
            raise
        if fp32 is not None:
            error.cause.reason += f"; the {fp32} variant is the artifact to use"
        return skipped_variant(variant.precision, error.cause, passes[start:])
    result = variant_result(variant.precision, final, passes[start:], run.ctx.work_dir, engine, run.require_judged)
    if engine and final.kind is ArtifactKind.ENGINE:
        run.engines[variant.precision] = final
    if run.accuracy is not None and run.runner is not None:
        result = run.accuracy.apply(result, run.runner(final))
    return replace(result, required=variant.required, fallback=variant.fallback)


def run_plan(plan: BuildPlan, run: PlanRun) -> list[VariantResult]:
    """Run every variant of ``plan`` in order (then the fp32 fallback if needed); one result per variant."""
    from optpipe.builder.selection import skipped_variant, twin_not_built
    from optpipe.precision import VariantSkipped

    log = run.ctx.log
    results: list[VariantResult] = []
    for variant in plan.variants:
        fp32 = _fp32_variant(plan, results)
        if any(r.precision == variant.unless_passed and r.passed for r in results):
            reason = twin_not_built(variant.precision, str(variant.unless_passed))
            log(f"[{variant.precision}] {reason}")
            results.append(replace(skipped_variant(variant.precision, VariantSkipped(reason), []), required=False))
            continue
        log(f"[{variant.precision}]")
        results.append(_run_variant(variant, run, plan.engine, fp32))
    if plan.fallback is not None and results and all(r.status is VariantStatus.SKIPPED for r in results):
        skipped = ", ".join(r.precision for r in results)
        run.report.warnings.append(f"every requested variant was skipped ({skipped}): fp32 was built and "
                                   "validated as the fallback")  # fmt: skip
        log(f"[fp32] (fallback: {skipped} skipped)")
        results.append(_run_variant(plan.fallback, run, plan.engine, _fp32_variant(plan, results)))
    for precision, reason in plan.unavailable.items():
        results.append(skipped_variant(precision, VariantSkipped(reason), []))
    return benchmark_variants(plan, run, results)


def _fp32_variant(plan: BuildPlan, results: Sequence[VariantResult]) -> str | None:
    """The FP32 variant a skipped variant points to: ``fp32+fused`` once built (under auto it comes first and
    ``fp32`` is built only if it fails), else ``fp32`` when the plan has it; None without one."""
    if any(r.precision == "fp32" + FUSED_SUFFIX and r.status is VariantStatus.BUILT for r in results):
        return "fp32" + FUSED_SUFFIX
    return "fp32" if any(v.precision == "fp32" for v in plan.variants) else None


def benchmark_variants(plan: BuildPlan, run: PlanRun, results: list[VariantResult]) -> list[VariantResult]:
    """Time every built engine and PyTorch eager in ONE run; each variant gets its share, the report the run."""
    engines = {r.precision: run.engines[r.precision] for r in results
               if r.status is VariantStatus.BUILT and r.precision in run.engines}
    if plan.benchmark is None or not engines:
        return results
    from optpipe.passes.benchmark import variant_metrics

    run.ctx.log(f"[benchmark] {', '.join(engines)} and PyTorch eager, interleaved in one run")
    started = time.perf_counter()
    with RssSampler(PASS_RSS_INTERVAL_S) as sampler:
        record, memory = _measure_or_reuse(plan.benchmark, engines, run)
    status = PassStatus.CACHED if record.cached is not None else PassStatus.OK
    run.report.passes.append(PassRecord("benchmark", "build", time.perf_counter() - started, status,
                                        metrics=record.to_dict(), warnings=list(record.warnings),
                                        peak_rss_mb=mib(sampler.peak)))
    run.report.benchmark = record
    run.report.baseline = record.baseline
    made = {"benchmark": record.cached} if record.cached is not None else {}
    return [replace(r, torch_latency=None, cached={**r.cached, **made},
                    **variant_metrics(record, r.precision, memory.get(r.precision)))
            if r.precision in engines else r for r in results]


def _measure_or_reuse(bench: Any, engines: dict[str, Artifact], run: PlanRun) -> tuple[Any, dict[str, Any]]:
    """The build's one benchmark: measured, or reused from a :class:`~optpipe.cache.store.PassCache` instrument.

    Reused only under exactly the same conditions: the key is ``BenchmarkPass.inputs()`` (every
    engine's sha256, batch, threads, budget, seed) plus what the cache adds to every measurement's
    key (model fingerprint, threads, runtime versions, host); ``--rebench`` measures again. A
    reused record carries ``cached`` (when and where it was measured).
    """
    import hashlib
    import json

    from optpipe.cache.store import PassCache
    from optpipe.core.records import BenchmarkRecord
    from optpipe.infra.pass_base import PassResult

    cache = next((i for i in run.instruments if isinstance(i, PassCache)), None)
    if cache is None:
        return bench.measure(engines, run.ctx)
    inputs = json.dumps(bench.inputs(engines, run.ctx), sort_keys=True, default=str)
    first = next(iter(engines.values()))  # an engine in the build: the cache checks its entry's artifact exists
    timed = first.derive(sha256=hashlib.sha256(inputs.encode()).hexdigest(), precision="build",
                         producer="benchmark", extra={})
    hit = cache.before_pass(bench, timed, run.ctx)
    if hit is not None:
        try:
            record = BenchmarkRecord.from_dict(hit.metrics["record"])
            made = CachedMeasurement.from_dict(hit.metrics["cached"])
            return replace(record, cached=made), dict(hit.metrics.get("memory") or {})
        except (KeyError, TypeError, ValueError, AttributeError) as error:  # an entry of another shape: measure
            run.ctx.log(f"optpipe: warning: cached benchmark unreadable ({error}); measuring again")
    record, memory = bench.measure(engines, run.ctx)
    if hit is None:
        cache.after_pass(bench, timed, PassResult(timed, modified=False,
                                                  metrics={"record": record.to_dict(), "memory": memory}), run.ctx)
    return record, memory


def check_benchmark_batch(batch: int, specs: Sequence[TensorSpec], dims: Sequence[DynamicDim]) -> None:
    """``--batch`` must be a batch the artifact accepts: within the dynamic range, or the static example batch."""
    if batch < 1:
        raise UserInputError(f"--batch must be >= 1, got {batch}")
    by_name = {d.axis_name: d for d in dims}
    for spec in specs:
        if not spec.shape:
            continue
        first = spec.shape[0]
        if isinstance(first, str) and first in by_name:
            dim = by_name[first]
            if not dim.min <= batch <= dim.max:
                raise UserInputError(
                    f"--batch {batch} is outside the dynamic range {dim.min}..{dim.max} of axis 0 of input "
                    f"'{spec.name}' (--dynamic {dim.axis_name}={dim.min}:{dim.opt}:{dim.max})"
                )
        elif isinstance(first, int) and first != batch:
            raise UserInputError(
                f"--batch {batch}: input '{spec.name}' has a static batch of {first} (the example's); "
                "declare --dynamic batch=MIN:OPT:MAX to benchmark other batch sizes"
            )
