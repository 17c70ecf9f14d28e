"""``optpipe engine DIR``: finish a split TensorRT build on the GPU machine.

Why a separate step: TensorRT and an NVIDIA GPU are usually not where the
model is trained or where CI runs. ``optpipe build --target tensorrt`` on such
a machine does every CPU stage (export, simplify, precision, TensorRT lint,
golden data) and writes a directory whose ``report.json`` says "split". This
module resumes from that directory alone - no PyTorch model, no original
inputs: it reads ``report.json`` with the one report reader
(:func:`optpipe.report.build_report.read_report`; input specs, outputs, dynamic profiles,
tolerances come from its typed build record), makes a plan of the pending
variants' engine pipelines from their saved ONNX and runs it with the same
loop as a one-machine build (:func:`optpipe.builder.plan.run_plan`: engine,
validate against the saved golden data, benchmark), and rewrites
``report.json`` atomically with status "complete".

Checks are ordered so that the cheapest, most certain failure is reported
first: a missing or malformed directory is a usage error (exit 2) on any
machine; only then is TensorRT/GPU availability checked (exit 3).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from optpipe.builder.options import BenchmarkOptions, BuildOptions, OutputKinds, TensorRTOptions, Tolerances
from optpipe.builder.plan import (
    BuildPlan,
    PlanRun,
    ProgressInstrument,
    VariantPlan,
    benchmark_step,
    check_benchmark_batch,
    run_plan,
    variant_passes,
)
from optpipe.compare.golden import GoldenData
from optpipe.core.artifact import Artifact, ArtifactKind, sha256_files
from optpipe.core.console import info
from optpipe.core.errors import EnvironmentUnavailable, UserInputError
from optpipe.core.records import BuildRecord, VariantStatus
from optpipe.core.tensor_spec import TensorSpec
from optpipe.core.version import __version__
from optpipe.infra.pass_base import BuildContext
from optpipe.infra.pipeline import Pipeline
from optpipe.onnx.utils import onnx_files
from optpipe.report.build_report import Report, ReportUnreadable, read_report
from optpipe.runtime.tensorrt.target import TensorRTTarget

REPORT_NAME = "report.json"
# No package index hosts optpipe: the GPU machine installs it from a wheel built from this
# checkout, or straight from the repository, with the [tensorrt] extra.
INSTALL_HINT = (
    f"pip wheel --no-deps -w dist <optpipe checkout> here, then on the GPU machine "
    f"pip install 'optpipe-{__version__}-py3-none-any.whl[tensorrt]' "
    "(or pip install 'optpipe[tensorrt] @ git+<optpipe repository URL>')"
)


def split_next_step(out_dir: str | Path, reason: str, trt: TensorRTOptions) -> str:
    """The report's ``next_step`` for a split build: exactly what to run, and where.

    Also validates the TensorRT options now, on the CPU machine, so a bad
    ``--opt-level`` or ``--hardware-compat`` fails here rather than after the
    directory was copied to the GPU machine.
    """
    from optpipe.builder.pass_configs import trt_engine_config

    trt_engine_config(trt)
    reason = reason.rstrip(".")
    return (
        f"copy {out_dir} to a machine with an NVIDIA GPU, install TensorRT there with: {INSTALL_HINT}, "
        f"then run: optpipe engine {out_dir}  (the engines were not built here: {reason})"
    )


@dataclass(frozen=True)
class SplitBuild:
    """A split build directory, read and checked (nothing run yet)."""

    directory: Path
    report: Report
    build: BuildRecord
    golden: GoldenData


def _not_a_report(directory: Path, what: str) -> UserInputError:
    return UserInputError(
        f"{directory / REPORT_NAME} is not an optpipe build report ({what}); "
        "point optpipe engine at the --out directory of 'optpipe build --target tensorrt'"
    )


def read_split_build(directory: str | Path) -> SplitBuild:
    """Read and check ``DIR/report.json`` and the golden data; UserInputError (exit 2) when unusable."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserInputError(f"build directory {directory} does not exist or is not a directory")
    path = directory / REPORT_NAME
    if not path.is_file():
        raise UserInputError(
            f"{directory} has no {REPORT_NAME}; it is not an optpipe build directory "
            "(run 'optpipe build --target tensorrt ... --out DIR' first)"
        )
    try:
        report = read_report(path)
    except ReportUnreadable as error:
        raise _not_a_report(directory, str(error)) from None
    if report.target != "tensorrt":
        raise UserInputError(
            f"{directory} was built for target '{report.target}'; optpipe engine only finishes "
            "TensorRT builds (rebuild with --target tensorrt)"
        )
    if report.build is None:
        raise _not_a_report(directory, "no 'build' record")
    if not report.variants:
        raise _not_a_report(directory, "no variants")
    for variant in report.variants:
        if not variant.onnx or not (directory / variant.onnx).is_file():
            raise UserInputError(
                f"variant '{variant.precision}' of {directory} has no ONNX file "
                f"({directory / str(variant.onnx or '?')} missing); copy the whole build directory"
            )
    golden_dir = directory / report.build.golden
    golden = GoldenData.load(golden_dir) if golden_dir.is_dir() else GoldenData([])
    if not golden.cases:
        raise UserInputError(
            f"{golden_dir} holds no golden data (*.npz); copy the whole build directory, golden/ included"
        )
    return SplitBuild(directory, report, report.build, golden)


def _engine_plan(split: SplitBuild, options: BuildOptions, rebuild: bool) -> BuildPlan:
    """One engine pipeline per pending variant (all of them with ``rebuild``), assembled before any build."""
    target = TensorRTTarget()
    todo = [v for v in split.report.variants if v.status is not VariantStatus.BUILT or rebuild]
    if not todo:
        raise UserInputError(
            f"{split.directory} has no pending TensorRT variants (status '{split.report.status}'); "
            "pass --rebuild to rebuild its engines on this machine"
        )
    variants = [
        VariantPlan(v.precision, Pipeline(variant_passes(v.precision, target, options, engine=True, lower=False),
                                          variant=v.precision), required=v.required)
        for v in todo
    ]
    return BuildPlan(variants, engine=True, benchmark=benchmark_step(options))


def finish_build(
    directory: str | Path,
    *,
    trt_options: TensorRTOptions | None = None,
    benchmark: bool = True,
    benchmark_batch: int | None = None,
    rebuild: bool = False,
    log: Callable[[str], None] = info,
) -> Report:
    """Build, validate and time the pending TensorRT engines of a split build; rewrite its report.

    ``trt_options`` override the TensorRT options recorded by ``optpipe build`` (unset ones keep the
    recorded values). ``rebuild`` also rebuilds variants already built (e.g. on another GPU). Raises
    UserInputError (exit 2) for an unusable directory, EnvironmentUnavailable (exit 3) without
    TensorRT or a GPU. A failed parity gate is not an exception: ``report.exit_code`` is 1.
    """
    from optpipe.report.build_report import environment

    split = read_split_build(directory)
    if benchmark and benchmark_batch is not None:  # a batch the engines' profiles accept, before any build
        check_benchmark_batch(benchmark_batch, split.build.inputs, split.build.dynamic)
    try:
        recorded = TensorRTOptions.parse(split.build.trt)
        tolerances = Tolerances.parse(split.build.tolerances)
        kinds = OutputKinds.parse(split.build.output_kinds)  # the kinds the CPU stage judged by
    except UserInputError as error:
        raise _not_a_report(split.directory, f"malformed 'build' record: {error}") from None
    trt = (trt_options or TensorRTOptions()).over(recorded)
    options = BuildOptions(target="tensorrt", tolerances=tolerances, output_kinds=kinds, trt=trt,
                           benchmark=BenchmarkOptions(benchmark, benchmark_batch))
    plan = _engine_plan(split, options, rebuild)  # validates every pipeline before the availability check
    target = TensorRTTarget()
    try:
        target.check_available()
    except EnvironmentUnavailable as error:
        raise EnvironmentUnavailable(
            f"cannot finish {split.directory} on this machine: {error}. 'optpipe engine' must run where "
            "TensorRT and an NVIDIA GPU are available; nothing was changed"
        ) from error
    report = split.report
    report.build = replace(split.build, trt=trt.set_values(), split_environment=report.environment)
    report.environment = environment()
    ctx = BuildContext(work_dir=split.directory, target=target, input_specs=split.build.inputs,
                       output_names=split.build.outputs, dynamic=split.build.dynamic, golden=split.golden, log=log)
    log(f"optpipe: finishing {report.model} with TensorRT in {split.directory}")
    _run_engines(split, plan, ctx, report)
    report.status = "complete"
    report.next_step = None
    report.write(split.directory / REPORT_NAME)
    from optpipe.report.manifest import finish_build_dir  # report.html, then manifest.json listing the new plans

    finish_build_dir(split.directory, report, ctx, plan.pipelines())
    report.out_dir = split.directory
    return report


def _run_engines(split: SplitBuild, plan: BuildPlan, ctx: BuildContext, report: Report) -> None:
    """Run the engine plan with the build's loop; each result replaces its pending variant, keeping its CPU passes."""
    outputs = tuple(TensorSpec(name, (), "") for name in split.build.outputs)
    earlier = {v.precision: v for v in report.variants}

    def source(precision: str) -> Artifact:
        onnx_path = split.directory / str(earlier[precision].onnx)
        return Artifact(ArtifactKind.ONNX, onnx_path, sha256_files(onnx_files(onnx_path)), split.build.inputs,
                        outputs, precision=precision, producer="split-build")

    start = len(report.passes)
    require_judged = bool((split.build.options or {}).get("require_judged", True))  # as the CPU stage judged
    results = run_plan(plan, PlanRun(ctx, report, [ProgressInstrument(ctx.log)], source,
                                     require_judged=require_judged))
    for result in results:
        old = earlier[result.precision]
        merged = replace(result, passes={**old.passes, **result.passes}, onnx=old.onnx)
        index = next(i for i, v in enumerate(report.variants) if v.precision == result.precision)
        report.variants[index] = merged
    # The lint runs again here; its warnings were already reported by the CPU stage.
    new_warnings = [w for record in report.passes[start:] for w in record.warnings]
    report.warnings.extend(w for w in dict.fromkeys(new_warnings) if w not in report.warnings)
