"""Finish a split TensorRT build on the GPU machine (``optpipe engine DIR``).

Why a separate step: TensorRT and an NVIDIA GPU are usually not where the
model is trained or where CI runs. ``optpipe build --target tensorrt`` on such
a machine does every CPU stage (export, simplify, precision, TensorRT lint,
golden data) and writes a directory whose ``report.json`` says "split". This
module resumes from that directory alone - no PyTorch model, no original
inputs: it reads the ``build`` record (input specs, outputs, dynamic
profiles, tolerances), builds each pending variant's engine from its saved
ONNX, validates it against the saved golden data with the same parity code as
a one-machine build (:class:`~optpipe.passes.validate.ValidatePass`), times
it, and rewrites ``report.json`` atomically with status "complete".

Checks are ordered so that the cheapest, most certain failure is reported
first: a missing or malformed directory is a usage error (exit 2) on any
machine; only then is TensorRT/GPU availability checked (exit 3).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from optpipe.artifact import Artifact, ArtifactKind, sha256_files
from optpipe.errors import EnvironmentUnavailable, UserInputError
from optpipe.golden import GoldenData
from optpipe.onnx_utils import onnx_files
from optpipe.pipeline import PassRecord
from optpipe.report import SCHEMA, Report
from optpipe.tensor_spec import DynamicDim, TensorSpec

REPORT_NAME = "report.json"
INSTALL_HINT = "pip install 'optpipe[tensorrt]'"


def split_next_step(out_dir: str | Path, reason: str, options: Mapping[str, Any]) -> str:
    """The report's ``next_step`` for a split build: exactly what to run, and where.

    Also validates the TensorRT options now, on the CPU machine, so a bad
    ``--opt-level`` or ``--hardware-compat`` fails here rather than after the
    directory was copied to the GPU machine.
    """
    from optpipe.passes.engine_trt import TrtEngineConfig

    TrtEngineConfig.from_options(options)
    reason = reason.rstrip(".")
    return (
        f"copy {out_dir} to a machine with an NVIDIA GPU, install TensorRT there with: {INSTALL_HINT}, "
        f"then run: optpipe engine {out_dir}  (the engines were not built here: {reason})"
    )


@dataclass(frozen=True)
class SplitBuild:
    """A split build directory, read and checked (nothing run yet)."""

    directory: Path
    data: dict[str, Any]
    input_specs: tuple[TensorSpec, ...]
    output_names: tuple[str, ...]
    dynamic: tuple[DynamicDim, ...]
    tolerances: dict[str, dict[str, float]]
    trt_options: dict[str, Any]
    golden: GoldenData


def _require(condition: bool, directory: Path, what: str) -> None:
    if not condition:
        raise UserInputError(
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
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise UserInputError(f"cannot read {path}: {error}") from None
    _require(isinstance(data, dict), directory, "not a JSON object")
    _require(str(data.get("schema", "")).split("/")[0] == SCHEMA.split("/")[0], directory, "unknown schema")
    if data.get("target") != "tensorrt":
        raise UserInputError(
            f"{directory} was built for target '{data.get('target')}'; optpipe engine only finishes "
            "TensorRT builds (rebuild with --target tensorrt)"
        )
    build = data.get("build")
    _require(isinstance(build, dict), directory, "no 'build' record")
    _require(isinstance(data.get("variants"), list) and bool(data["variants"]), directory, "no variants")
    try:
        specs = tuple(TensorSpec.from_dict(item) for item in build["inputs"])
        outputs = tuple(str(name) for name in build["outputs"])
        dynamic = tuple(
            DynamicDim(str(d["name"]), int(d["min"]), int(d["opt"]), int(d["max"])) for d in build["dynamic"]
        )
        tolerances = dict(build.get("tolerances") or {})
        trt_options = dict(build.get("trt") or {})
        golden_dir = directory / str(build.get("golden", "golden"))
    except (KeyError, TypeError, ValueError, AssertionError) as error:
        raise UserInputError(f"{path}: malformed 'build' record ({type(error).__name__}: {error})") from None
    for variant in data["variants"]:
        _require(isinstance(variant, dict) and "precision" in variant, directory, "malformed variant")
        onnx = variant.get("onnx")
        if not onnx or not (directory / str(onnx)).is_file():
            raise UserInputError(
                f"variant '{variant['precision']}' of {directory} has no ONNX file "
                f"({directory / str(onnx or '?')} missing); copy the whole build directory"
            )
    golden = GoldenData.load(golden_dir) if golden_dir.is_dir() else GoldenData([])
    if not golden.cases:
        raise UserInputError(
            f"{golden_dir} holds no golden data (*.npz); copy the whole build directory, golden/ included"
        )
    return SplitBuild(directory, data, specs, outputs, dynamic, tolerances, trt_options, golden)


def report_from_dict(data: Mapping[str, Any]) -> Report:
    """A :class:`Report` from its JSON form, so a finished build keeps the CPU stages' records."""
    names = {f.name for f in fields(PassRecord)}
    records = [PassRecord(**{k: v for k, v in r.items() if k in names}) for r in data.get("passes", [])]
    report = Report(
        target=str(data["target"]),
        model=str(data.get("model", "")),
        status=str(data.get("status", "split")),
        passes=records,
        variants=[dict(v) for v in data.get("variants", [])],
        baseline=data.get("baseline"),
        selected=data.get("selected"),
        warnings=list(data.get("warnings", [])),
        next_step=data.get("next_step"),
        build=dict(data.get("build") or {}),
    )
    return report


def finish_build(
    directory: str | Path,
    *,
    trt_options: Mapping[str, Any] | None = None,
    benchmark: bool = True,
    benchmark_batch: int | None = None,
    rebuild: bool = False,
    log: Callable[[str], None] = print,
) -> Report:
    """Build, validate and time the pending TensorRT engines of a split build; rewrite its report.

    ``trt_options`` override the TensorRT options recorded by ``optpipe build``
    (keys of :class:`~optpipe.passes.engine_trt.TrtEngineConfig`; ``None``
    values keep the recorded ones). ``rebuild`` also rebuilds variants already
    built (e.g. on another GPU). Raises UserInputError (exit 2) for an unusable
    directory, EnvironmentUnavailable (exit 3) without TensorRT or a GPU. A
    failed parity gate is not an exception: ``report.exit_code`` is 1.
    """
    from optpipe.builder import ProgressInstrument, _check_benchmark_batch, _variant_record
    from optpipe.pass_base import BuildContext
    from optpipe.passes.benchmark import BenchmarkConfig, BenchmarkPass
    from optpipe.passes.validate import ValidateConfig, ValidatePass
    from optpipe.pipeline import Pipeline
    from optpipe.registry import engine_pass, pre_engine_passes
    from optpipe.report import environment
    from optpipe.tensorrt.trt_target import TensorRTTarget

    split = read_split_build(directory)
    if benchmark and benchmark_batch is not None:  # a batch the engines' profiles accept, before any build
        _check_benchmark_batch(benchmark_batch, split.input_specs, split.dynamic)
    merged = dict(split.trt_options)
    merged.update({k: v for k, v in (trt_options or {}).items() if v is not None and v is not False})
    options: dict[str, Any] = {"trt": merged, "tolerances": split.tolerances}
    target = TensorRTTarget()
    todo = [v for v in split.data["variants"] if v.get("status") != "built" or rebuild]
    if not todo:
        raise UserInputError(
            f"{split.directory} has no pending TensorRT variants (status '{split.data.get('status')}'); "
            "pass --rebuild to rebuild its engines on this machine"
        )
    # Assemble (and so validate) every pipeline before the availability check and any build.
    pipelines = {}
    for variant in todo:
        passes = [
            *pre_engine_passes(target),
            engine_pass(target, options),
            ValidatePass(ValidateConfig(tolerances=split.tolerances)),
        ]
        if benchmark:
            passes.append(BenchmarkPass(BenchmarkConfig(batch=benchmark_batch)))
        pipelines[variant["precision"]] = Pipeline(passes, variant=variant["precision"])
    try:
        target.check_available()
    except EnvironmentUnavailable as error:
        raise EnvironmentUnavailable(
            f"cannot finish {split.directory} on this machine: {error}. 'optpipe engine' must run where "
            "TensorRT and an NVIDIA GPU are available; nothing was changed"
        ) from error

    report = report_from_dict(split.data)
    report.build = dict(report.build or {}, trt=merged, split_environment=split.data.get("environment"))
    report.environment = environment()
    ctx = BuildContext(
        work_dir=split.directory,
        target=target,
        input_specs=split.input_specs,
        output_names=split.output_names,
        dynamic=split.dynamic,
        golden=split.golden,
        log=log,
        options=options,
    )
    outputs = tuple(TensorSpec(name, (), "") for name in split.output_names)
    log(f"optpipe: finishing {report.model} with TensorRT in {split.directory}")
    new_warnings: list[str] = []
    for variant in todo:
        precision = str(variant["precision"])
        onnx_path = split.directory / str(variant["onnx"])
        source = Artifact(
            ArtifactKind.ONNX,
            onnx_path,
            sha256_files(onnx_files(onnx_path)),
            split.input_specs,
            outputs,
            precision=precision,
            producer="split-build",
        )
        log(f"[{precision}]")
        start = len(report.passes)
        final = pipelines[precision].run(source, ctx, report.passes, [ProgressInstrument(log)])
        records = report.passes[start:]
        record = _variant_record(precision, final, records, split.directory, True)
        record["passes"] = {**variant.get("passes", {}), **record["passes"]}
        record["onnx"] = variant["onnx"]
        index = next(i for i, v in enumerate(report.variants) if v.get("precision") == precision)
        report.variants[index] = record
        new_warnings.extend(w for r in records for w in r.warnings)
    # The lint runs again here; its warnings were already reported by the CPU stage.
    report.warnings.extend(w for w in dict.fromkeys(new_warnings) if w not in report.warnings)
    report.status = "complete"
    report.next_step = None
    report.write(split.directory / REPORT_NAME)
    from optpipe.manifest import finish_build_dir  # report.html, then manifest.json listing the new plans

    finish_build_dir(split.directory, report, ctx, list(pipelines.values()))
    report.out_dir = split.directory
    return report
