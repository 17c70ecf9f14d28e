"""``optpipe.build``: the whole compile, from an in-memory module to a report.

Order of work: parse the options (:mod:`optpipe.builder.options`), check the
output directory and the target, derive tensor specs, run the model once
for its outputs, make the plan (every pipeline is assembled and kind-checked
before the first pass runs: :mod:`optpipe.builder.plan`), compute golden data
with PyTorch, run the shared prefix (export, simplify) once, run the plan's
variants, then record the report. When the target's engine cannot be built
on this machine (TensorRT without a GPU), the build stops after every CPU
stage and the report says how to finish (a split build, exit 3).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from optpipe.builder import pass_configs
from optpipe.builder.memory_budget import plan_record
from optpipe.builder.options import (
    PRECISIONS,
    BuildOptions,
    OutputKinds,
    TensorRTOptions,
    Tolerances,
    parse_build_options,
    reject_unknown_keywords,
)
from optpipe.builder.out_dir import check_out_dir, discard, make_staging, pause_point, publish
from optpipe.builder.plan import (
    BuildPlan,
    PlanRun,
    ProgressInstrument,
    check_benchmark_batch,
    plan_variants,
    run_plan,
    variant_passes,
)
from optpipe.cache.reference import cached_reference
from optpipe.compare.golden import RealRows, make_golden, output_kinds_of, real_row_sets, row_split_record
from optpipe.core.artifact import Artifact, ArtifactKind
from optpipe.core.console import info
from optpipe.core.errors import EnvironmentUnavailable, PassError, UserInputError, disk_full_reason
from optpipe.core.memory import RssSampler, max_rss_bytes
from optpipe.core.records import BuildRecord
from optpipe.core.tensor_spec import DynamicDim, TensorSpec
from optpipe.core.value_checks import check_environment
from optpipe.infra.pass_base import BuildContext
from optpipe.infra.pass_options import apply_pass_options
from optpipe.infra.pipeline import Instrument, Pipeline
from optpipe.model.default_batch import batch_blocker, covers_axis0, default_batch_dim, static_batch_warning
from optpipe.model.default_seq import (
    data_lengths,
    declares_axes,
    default_seq_dim,
    position_limit,
    seq_blocker,
    static_seq_warning,
    token_axes,
)
from optpipe.model.input_parsing import DynamicArg, check_unique_names, resolve_input_specs
from optpipe.model.paged_weights import WeightsPager
from optpipe.onnx.producers import output_producers
from optpipe.report.build_report import Report
from optpipe.runtime.target import Target, get_target

if TYPE_CHECKING:
    from optpipe.report.provenance import ProvenanceInputs

#: How often the whole build's resident set is sampled (s); each pass samples its own more often.
BUILD_RSS_INTERVAL_S = 0.02

__all__ = ["PRECISIONS", "ProgressInstrument", "build", "build_with_options", "variant_passes"]


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    return value.detach().cpu().numpy()


@reject_unknown_keywords
def build(
    model: Any,
    example_inputs: Sequence[Any] | Mapping[str, Any],
    *,
    out_dir: str | Path,
    target: str = "cpu",
    precisions: str | Sequence[str] = ("fp32",),
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic: Sequence[DynamicDim | DynamicArg] = (),
    overwrite: bool = False,
    tolerances: Tolerances | Mapping[str, Mapping[str, float]] | None = None,
    output_kinds: OutputKinds | Mapping[str, str] | None = None,
    threads: int | None = None,
    benchmark: bool = True,
    benchmark_batch: int | None = None,
    bench_seconds: float | None = None,
    warmup: int | None = None,
    iterations: int | None = None,
    heldout_inputs: Mapping[str, np.ndarray] | None = None,
    exporter: str = "auto",
    model_name: str = "",
    log: Callable[[str], None] = info,
    instruments: Sequence[Instrument] = (),
    pass_options: Mapping[str, Mapping[str, Any]] | None = None,
    calib_data: Any = None,
    synthetic_calib: bool = False,
    calib_method: str = "minmax",
    calib_cache: str | Path | None = None,
    input_ranges: Mapping[str, tuple[float, float]] | None = None,
    eval_data: tuple[Mapping[str, np.ndarray], np.ndarray] | None = None,
    eval_origin: str | None = None,
    max_accuracy_drop: float | None = None,
    guard_max_keep: float | None = None,
    no_guard: bool = False,
    guard_seconds: float | None = None,
    int8_exclude: Sequence[str] = (),
    fp16_block: Sequence[str] = (),
    trt: TensorRTOptions | Mapping[str, Any] | None = None,
    profile: bool = False,
    static_batch: bool = False,
    static_seq: bool = False,
    sweep: bool = False,
    sweep_seconds: float | None = None,
    latency_budget: float | None = None,
    rebench: bool = False,
    require_judged: bool = True,
    fuse: str = "auto",
    external_data_above: int | str | None = None,
    max_rss: str | int | None = None,
    mlflow: Any = None,
    provenance: ProvenanceInputs | None = None,
) -> Report:
    """Compile ``model`` for ``target`` and return the report (also written to ``out_dir/report.json``).

    ``example_inputs``: tensors in ``forward()`` order, or a dict name -> tensor. ``dynamic``: ``DynamicDim`` or
    :class:`~optpipe.model.input_parsing.DynamicArg` values (default: a dynamic batch 1..64 when the model can vary
    it, a dynamic ``seq`` axis on token inputs). The other keywords are ``optpipe build``'s flags, same names and
    defaults (``precisions`` is ``--precision``, ``benchmark=False`` ``--no-benchmark``; test_option_table.py
    proves they agree), checked by :func:`~optpipe.builder.options.parse_build_options` before anything runs;
    an unknown keyword is a TypeError naming the closest one. API only: ``calib_data``/``eval_data`` may be
    samples in memory, ``trt`` = :data:`~optpipe.builder.options.TRT_KEYS`, ``pass_options`` = {pass: {Config
    field: value}} (``optpipe passes``), ``mlflow`` (True, a URI or an MlflowTarget), ``provenance``. Raises
    :class:`~optpipe.core.errors.OptpipeError` for user and environment errors; a failed parity gate is *not* an
    exception but ``report.passed is False`` (``report.exit_code`` 1, or 4 when unjudged).
    """
    check_environment()  # the OPTPIPE_* variables too, named in the error
    options = parse_build_options(**_parser_arguments(locals()))  # every option checked, before any work
    tracking = _mlflow_target(mlflow)  # a missing optpipe[mlflow] fails now, not after the build
    if provenance is None:  # how this build was asked for: the arguments given (arrays by type)
        provenance = _api_provenance(model, _given_arguments(locals()))
    report = build_with_options(model, example_inputs, options, out_dir=out_dir, input_names=input_names,
                                output_names=output_names, dynamic=dynamic, heldout_inputs=heldout_inputs,
                                log=log, instruments=instruments, provenance=provenance)
    _log_to_mlflow(report, tracking)
    return report


def _api_provenance(model: Any, given: Mapping[str, Any]) -> ProvenanceInputs:
    """Provenance of a build asked for through the Python API: the arguments given (arrays by type)."""
    from optpipe.report.provenance import ProvenanceInputs, api_invocation

    return ProvenanceInputs(invocation=api_invocation(model, given))


def _log_to_mlflow(report: Report, tracking: Any) -> None:
    """Log the finished build to MLflow when asked (``mlflow=``); nothing otherwise."""
    if tracking is not None and report.out_dir is not None:
        from optpipe.report.mlflow_log import log_report

        log_report(report.to_dict(), report.out_dir, tracking)


def _parser_arguments(values: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments of :func:`build` that :func:`~optpipe.builder.options.parse_build_options` takes (same names)."""
    import inspect

    return {name: values[name] for name in inspect.signature(parse_build_options).parameters}


def _mlflow_target(mlflow: Any) -> Any:
    """``build(mlflow=...)`` as an MlflowTarget (None when not asked for), with MLflow importable."""
    if mlflow is None or mlflow is False:
        return None
    from optpipe.report.mlflow_log import MlflowTarget, import_mlflow

    import_mlflow()
    return MlflowTarget.coerce(mlflow)


def _given_arguments(values: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :func:`build` that differ from their defaults, in signature order."""
    import inspect

    skip = {"model", "example_inputs", "log", "instruments", "mlflow", "provenance", "options", "tracking"}
    given: dict[str, Any] = {}
    for name, parameter in inspect.signature(build).parameters.items():
        if name in skip or name not in values:
            continue
        value, default = values[name], parameter.default
        try:
            same = value is default or bool(type(value) is type(default) and value == default)
        except (TypeError, ValueError):  # arrays compare element-wise
            same = False
        if not same:
            given[name] = value
    return given


@dataclass(frozen=True)
class ModelIO:
    """The model's inputs and outputs as the build sees them (names, examples, specs, dynamic dims)."""

    names: tuple[str, ...]
    examples: tuple[np.ndarray, ...]
    specs: tuple[TensorSpec, ...]
    dims: tuple[DynamicDim, ...]
    batch_dim: DynamicDim | None
    named_axes: tuple[tuple[DynamicDim, Any], ...] = ()  # dims declared on given axes (NAME=...@INPUT.AXIS)
    outputs: tuple[str, ...] = ()


def _model_inputs(example_inputs: Sequence[Any] | Mapping[str, Any], input_names: Sequence[str] | None,
                  dynamic: Sequence[DynamicDim | DynamicArg]) -> ModelIO:
    """Input names, numpy examples, specs and dynamic dims; UserInputError when they disagree."""
    if isinstance(example_inputs, Mapping):
        input_names = list(example_inputs)
        example_inputs = list(example_inputs.values())
    examples = tuple(_to_numpy(value) for value in example_inputs)
    names = tuple(input_names) if input_names else tuple(f"input_{i}" for i in range(len(examples)))
    if len(names) != len(examples):
        raise UserInputError(f"{len(names)} input names for {len(examples)} example inputs")
    dynamic_args = [d if isinstance(d, DynamicArg) else DynamicArg(d) for d in dynamic]
    specs = resolve_input_specs(list(names), [(e.shape, str(e.dtype)) for e in examples], dynamic_args)
    batch_dim = next((a.dim for a in dynamic_args if a.dim.axis_name == "batch" and a.axes is None), None)
    named_axes = tuple((a.dim, a.axes) for a in dynamic_args if a.axes is not None)
    return ModelIO(names, examples, tuple(specs), tuple(a.dim for a in dynamic_args), batch_dim, named_axes)


def _inference_module(model: Any, names: Sequence[str]) -> Any:
    """The model in eval mode, wrapped to take its inputs as keyword arguments when they must bind by name."""
    # A .pt2 program's module() refuses eval() (NotImplementedError); an exported program is already in
    # inference form, so there is nothing to switch.
    with contextlib.suppress(NotImplementedError):
        model.eval()
    return _bind_by_name(model, names)


def _model_outputs(model: Any, io: ModelIO, output_names: Sequence[str] | None) -> tuple[str, ...]:
    """Run the model once on the examples; its output names (given, dict keys or ``output_i``), checked."""
    import torch

    from optpipe.runtime.runners import default_output_names, flatten_outputs

    with torch.inference_mode():
        raw = model(*(torch.from_numpy(np.ascontiguousarray(e)) for e in io.examples))
    first = flatten_outputs(raw)
    outputs = tuple(output_names) if output_names else default_output_names(raw)  # dict keys, else output_<i>
    check_unique_names("output names", outputs)
    if len(outputs) != len(first):
        raise UserInputError(f"{len(outputs)} output names for a model with {len(first)} outputs")
    return outputs


def _checked_eval_set(options: BuildOptions, io: ModelIO, precisions: Sequence[str]) -> Any:
    """The eval set checked against the input specs, and the calibration cache file: before any work."""
    if options.calibration.cache and "int8" in precisions:  # corrupt or unwritable: fail before any work
        from optpipe.precision.calib_cache import check_cache_file

        check_cache_file(Path(options.calibration.cache))
    if options.eval.data is None:
        if options.eval.max_accuracy_drop is not None:
            raise UserInputError("--max-accuracy-drop needs labelled eval data: --eval-data FILE.npz or eval_data() "
                                 "in the model file")
        return None
    from optpipe.compare.task_accuracy import check_eval_set

    eval_inputs, eval_labels = options.eval.data
    return check_eval_set(eval_inputs, eval_labels, list(io.names), str(options.eval.origin or "eval_data"),
                          list(io.specs))


def build_with_options(
    model: Any,
    example_inputs: Sequence[Any] | Mapping[str, Any],
    options: BuildOptions,
    *,
    out_dir: str | Path,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic: Sequence[DynamicDim | DynamicArg] = (),
    heldout_inputs: Mapping[str, np.ndarray] | None = None,
    log: Callable[[str], None] = info,
    instruments: Sequence[Instrument] = (),
    provenance: ProvenanceInputs | None = None,
    warnings: Sequence[str] = (),
    declared_shapes: bool = False,
) -> Report:
    """:func:`build` with options already parsed (the CLI and config files come here).

    ``warnings``: what the caller already found (model-file helpers optpipe could not use), logged and reported.
    ``declared_shapes``: the example inputs are shapes the user declared (``--input``), kept as given on
    every axis but the batch: no default dynamic sequence axis.
    """
    from optpipe.builder.log import LogCapture
    from optpipe.builder.split_finish import split_next_step
    from optpipe.report.provenance import utc_now

    started, out = utc_now(), Path(out_dir)
    options = replace(options, out_dir=str(out))  # int8 reuses the ranges of a previous build there
    target = get_target(options.target)
    precisions = _precisions(options, target)
    io = _model_inputs(example_inputs, input_names, dynamic)
    out_seen = check_out_dir(out, options.overwrite)  # publish() refuses if another build changed it meanwhile
    reason, model_type = _unavailable_reason(target), type(model).__name__
    model, io, reference = _reference(model, io, output_names)
    options, memory = _memory_plan(model, options, precisions)  # one that cannot fit is refused before any work
    dynamic_io, static_reason = _with_default_batch(io, options, reference, dynamic)
    _check_against_model(options, dynamic_io)
    eval_set = _checked_eval_set(options, io, precisions)
    options, holdout, holdout_warning = _calibration_holdout(options, dynamic_io, precisions, log, heldout_inputs)
    seq_rows = (eval_set[0] if eval_set is not None else None, heldout_inputs, holdout.heldout if holdout else None,
                *(options.calibration.samples or ()))
    dynamic_io, fallbacks, seq_reason = _with_fallbacks(io, dynamic_io, options, declared_shapes, reference,
                                                        dynamic, log, seq_rows)
    # Assemble every pipeline before running anything: a mis-assembled build fails now.
    prefix = _prefix_pipeline(options)
    plan = plan_variants(precisions, target, options, engine=reason is None)
    next_step = None if reason is None else split_next_step(out, reason, options.trt)
    staging = make_staging(out)
    report = _new_report(target, options, model_type, log,
                         _early_warnings(warnings, static_reason, seq_reason, holdout_warning))
    golden_rows = real_row_sets(heldout_inputs, holdout.guard if holdout else None, holdout.test if holdout else None)
    capture = LogCapture(staging / "build.log").start()  # third-party log lines: the file, not the console
    sampler = RssSampler(BUILD_RSS_INTERVAL_S).start()  # the build's peak RSS (each pass has its own)
    try:
        ctx = _context(model, dynamic_io, options, target, staging, log)
        reference = cached_reference(reference, instruments, ctx)  # outputs only: the benchmark times its own
        ctx.golden = _golden(reference, dynamic_io, golden_rows)
        log(f"optpipe: building {report.model} for target '{target.name}' ({', '.join(precisions)})")
        pager = WeightsPager()  # no pass after the export reads the PyTorch weights before the benchmark
        onnx_artifact = _run_prefix(prefix, ctx, report, [ProgressInstrument(log), pager, *instruments],
                                    fallbacks, _GoldenSource(reference, golden_rows))
        ctx.output_producers = dict(output_producers(onnx_artifact.path))  # evidence for each output's kind
        paged = pager.page(ctx.model)  # a cached export did not run
        ctx.golden.save(staging / "golden")
        pause_point("staged")
        _warn_meaningless_reference(ctx.golden.cases, report, log)
        record = _RecordInputs(options, tuple(precisions), reference, eval_set, next_step, provenance, started, holdout,
                               lambda: plan_record(memory, sampler.stop(), max_rss_bytes(), paged.bytes))
        _run_and_record(onnx_artifact, prefix, plan, ctx, report, [ProgressInstrument(log), *instruments], record,
                        capture)
        publish(staging, out, out_seen)
    except BaseException as error:
        sampler.stop()
        capture.stop()
        discard(staging)
        _raise_if_disk_full(error, out)
        raise
    report.out_dir = out
    _write_back_calib_cache(options, out, log)
    return report


def _early_warnings(given: Sequence[str], static_reason: str | None, seq_reason: str | None,
                    holdout: str | None) -> list[str]:
    """The warnings found before any pass ran: the caller's, a static batch or sequence axis and why, the holdout."""
    return [*given, *([static_batch_warning(static_reason)] if static_reason is not None else []),
            *([static_seq_warning(seq_reason)] if seq_reason is not None else []),
            *([holdout] if holdout is not None else [])]


def _memory_plan(model: Any, options: BuildOptions, precisions: Sequence[str]) -> tuple[BuildOptions, Any]:
    """The build's memory plan (:mod:`optpipe.builder.memory_budget`; refused when it cannot fit its limit) and
    the options with its calibration chunking."""
    from optpipe.builder.memory_budget import plan_memory
    from optpipe.core.precisions import base_precision

    plan = plan_memory(model, options.max_rss, calibrates=any(base_precision(p) == "int8" for p in precisions))
    return replace(options, calib_bytes=plan.calib_bytes), plan


def _raise_if_disk_full(error: BaseException, out: Path) -> None:
    """A full disk (or quota) during the build, in a pass or outside one: one line, exit 3, not a traceback."""
    reason = disk_full_reason(error)
    if reason is not None:
        where = f" in pass '{error.pass_name}'" if isinstance(error, PassError) else ""
        raise EnvironmentUnavailable(f"cannot write the build next to {out}{where}: {reason} (nothing was "
                                     "published; free some space and build again)") from None


def _unavailable_reason(target: Target) -> str | None:
    """Why this machine cannot build the target's engines (a split build), or None."""
    try:
        target.check_available()
    except EnvironmentUnavailable as error:
        return str(error)
    return None


def _context(model: Any, io: ModelIO, options: BuildOptions, target: Target, staging: Path,
             log: Callable[[str], None]) -> BuildContext:
    import torch

    return BuildContext(
        work_dir=staging,
        target=target,
        input_specs=io.specs,
        output_names=io.outputs,
        dynamic=io.dims,
        model=model,
        example_inputs=tuple(torch.from_numpy(np.ascontiguousarray(e)) for e in io.examples),
        threads=options.threads,
        log=log,
        reuse_measurements=not options.rebench,
    )


def _golden(reference: Any, io: ModelIO, rows: Sequence[RealRows]) -> Any:
    """PyTorch's outputs on the example, on other batch sizes when the batch is dynamic, and on held-out rows.

    ``rows``: the eval data's rows (test rows) and the rows held out of the calibration data (guard and test).
    """
    return make_golden(reference, dict(zip(io.names, io.examples, strict=True)), io.batch_dim, rows,
                       dynamic_axes=list(io.named_axes))


def _calibration_holdout(options: BuildOptions, io: ModelIO, precisions: Sequence[str],
                         log: Callable[[str], None], eval_rows: Mapping[str, np.ndarray] | None = None,
                         ) -> tuple[BuildOptions, Any, str | None]:
    """Hold out a share of the calibration rows as golden rows; the options then calibrate on the rest only.

    Reading the data is only required when a precision calibrates on it: otherwise a source that
    cannot be read is a warning (returned) and nothing is held out. Before the plan: its
    precision passes are configured with the calibration rows that are left. Calibration rows equal
    to an ``eval_data()`` row (``eval_rows``) are dropped first: eval rows never steer.
    """
    from optpipe.precision.calib_data import load_samples
    from optpipe.precision.holdout import MAX_SAMPLES, split_rows, without_rows

    calibration = options.calibration
    data = calibration.samples if calibration.samples is not None else calibration.source
    if data is None:
        return options, None, None
    try:
        samples = load_samples(data, list(io.specs), max_samples=MAX_SAMPLES)
    except UserInputError as error:
        if any(p in ("int8", "fp16") for p in precisions) or options.auto:
            raise
        return options, None, f"calibration data could not be read, so none of it is held out for parity: {error}"
    samples, dropped = without_rows(samples, dict(eval_rows) if eval_rows else None)
    if dropped:
        log(f"optpipe: {dropped} calibration row(s) are also eval_data() rows: not calibrated on "
            "(eval_data() rows judge and score, never steer)")
    holdout = split_rows(samples, io.specs)
    if holdout is None:
        return replace(options, calibration=replace(calibration, samples=samples)), None, None
    log(f"optpipe: {len(holdout.indices)} of {holdout.rows} calibration rows held out as parity rows "
        "(never calibrated on)")
    return replace(options, calibration=replace(calibration, samples=holdout.calibration)), holdout, None


def _with_default_batch(io: ModelIO, options: BuildOptions, reference: Any,
                        dynamic: Sequence[DynamicDim | DynamicArg]) -> tuple[ModelIO, str | None]:
    """``io`` with the default dynamic batch (axis 0 of every input, 1..64), and why not when it cannot have one.

    Unchanged (no reason) when the user said otherwise: ``static_batch``, or a declared dimension on axis 0.
    """
    declared = [d if isinstance(d, DynamicArg) else DynamicArg(d) for d in dynamic]
    if options.static_batch or any(covers_axis0(arg.axes) for arg in declared):
        return io, None
    examples = dict(zip(io.names, io.examples, strict=True))
    dim, reason = default_batch_dim(examples)
    if dim is None:
        return io, reason
    reason = batch_blocker(reference, examples, dim, reference.infer(examples))
    if reason is not None:
        return io, reason
    batched = _model_inputs(examples, io.names, [*declared, DynamicArg(dim)])
    return replace(batched, outputs=io.outputs), None


def _with_default_seq(io: ModelIO, reference: Any, dynamic: Sequence[DynamicDim | DynamicArg],
                      log: Callable[[str], None], row_sets: Sequence[Mapping[str, np.ndarray] | None],
                      ) -> tuple[ModelIO, str | None]:
    """``io`` with a dynamic ``seq`` axis on its token inputs (:mod:`optpipe.model.default_seq`), or why not.

    Unchanged without a reason when the inputs are not token-shaped or a declared dimension names a token axis.
    ``row_sets``: the eval, held-out and calibration rows whose real lengths set min and opt.
    """
    examples = dict(zip(io.names, io.examples, strict=True))
    axes = token_axes(examples)
    declared = [d if isinstance(d, DynamicArg) else DynamicArg(d) for d in dynamic]
    if not axes or any(declares_axes(arg.axes, axes) for arg in declared):
        return io, None
    lengths = data_lengths([examples, *row_sets], axes)
    limit = position_limit(getattr(reference.model, "module", reference.model))
    dim = default_seq_dim(int(examples[axes[0][0]].shape[1]), lengths, limit)
    reason = seq_blocker(reference, examples, axes, dim)
    if reason is not None:
        return io, reason
    log(f"optpipe: dynamic sequence axis '{dim.axis_name}' on {', '.join(name for name, _ in axes)}: "
        f"min {dim.min}, opt {dim.opt}, max {dim.max} (real lengths of {lengths.size} rows; position limit "
        f"{limit if limit is not None else 'unknown: the example length'})")
    kept = list(declared)  # none of them names a token axis (else the user's axis stands, above)
    if io.batch_dim is not None and not any(arg.axes is None for arg in kept):
        kept.append(DynamicArg(io.batch_dim))  # the default batch
    seq = _model_inputs(examples, io.names, [*kept, DynamicArg(dim, axes)])
    return replace(seq, outputs=io.outputs), None


def _reference(model: Any, io: ModelIO, output_names: Sequence[str] | None) -> tuple[Any, ModelIO, Any]:
    """The model ready for inference, ``io`` with its outputs named, and the PyTorch runner that is the reference."""
    from optpipe.runtime.runners import TorchRunner

    model = _inference_module(model, io.names)
    outputs = _model_outputs(model, io, output_names)
    return model, replace(io, outputs=outputs), TorchRunner(model, io.names, outputs)


def _check_against_model(options: BuildOptions, io: ModelIO) -> None:
    """Options that name the model's outputs or shapes, checked before any work (one line each, exit 2)."""
    if options.benchmark.enabled and options.benchmark.batch is not None:
        check_benchmark_batch(options.benchmark.batch, io.specs, io.dims)
    options.tolerances.check_outputs(io.outputs)
    options.output_kinds.check_outputs(io.outputs)


def _precisions(options: BuildOptions, target: Target) -> tuple[str, ...]:
    """The variants to build: the user's, or under ``auto`` the target's candidates (the fastest that passes wins)."""
    if not options.auto:
        return options.precisions
    from optpipe.builder.selection import auto_precisions

    return auto_precisions(target.name, fuse=options.fuse != "off")


def _prefix_pipeline(options: BuildOptions) -> Pipeline:
    """Export and simplify, shared by every variant, with the user's pass options applied."""
    from optpipe.passes.export_onnx import ExportConfig, ExportOnnx
    from optpipe.passes.simplify import SimplifyOnnx

    prefix = Pipeline([ExportOnnx(ExportConfig(exporter=options.exporter)), SimplifyOnnx()], variant="shared")
    pass_configs.store_weights(prefix.passes, options)
    apply_pass_options(prefix.passes, options.pass_options)
    return prefix


def _new_report(target: Target, options: BuildOptions, model_type: str, log: Callable[[str], None],
                warnings: Sequence[str]) -> Report:
    """The build's report, with what was found before any pass ran (logged and recorded)."""
    report = Report(target=target.name, model=options.model_name or model_type)
    if not options.benchmark.enabled and options.benchmark.batch is not None:
        report.warnings.append(f"--batch {options.benchmark.batch} is ignored: --no-benchmark skips the benchmark")
    for warning in warnings:
        _warn(warning, report, log)
    return report


def _with_fallbacks(io: ModelIO, dynamic_io: ModelIO, options: BuildOptions, declared_shapes: bool,
                    reference: Any, dynamic: Sequence[DynamicDim | DynamicArg], log: Callable[[str], None],
                    seq_rows: Sequence[Any]) -> tuple[ModelIO, list[_Fallback], str | None]:
    """The inputs to export (default dynamic batch, then a default dynamic sequence axis on token inputs),
    what to export instead when no exporter takes those axes, and why the sequence axis stays static."""
    fallbacks = [] if dynamic_io is io else [_Fallback(io, static_batch_warning, "a dynamic batch")]
    if options.static_seq or declared_shapes:
        return dynamic_io, fallbacks, None
    seq_io, seq_reason = _with_default_seq(dynamic_io, reference, dynamic, log, seq_rows)
    if seq_io is not dynamic_io:
        fallbacks.insert(0, _Fallback(dynamic_io, static_seq_warning, "a dynamic sequence axis"))
    return seq_io, fallbacks, seq_reason


@dataclass(frozen=True)
class _Fallback:
    """Inputs with fewer dynamic axes to export instead, the warning that says so, and what was dropped."""

    io: ModelIO
    warning: Callable[[str], str]
    dropped: str  # "a dynamic batch" | "a dynamic sequence axis"


def _run_prefix(prefix: Pipeline, ctx: BuildContext, report: Report, instruments: Sequence[Instrument],
                fallbacks: Sequence[_Fallback], golden_source: _GoldenSource) -> Artifact:
    """Export and simplify once. ``fallbacks``: the inputs with fewer dynamic axes to export instead, in order,
    each with its warning; ``golden_source``: the reference and held-out rows to make their golden data.

    The default dynamic axes never fail a build: when no exporter can export them (or the graph is
    wrong at another batch or length), the model is exported again with the next fallback (the
    batch without the sequence axis, then the example's static shapes), with a warning.
    The prefix checks its graphs without the rows held out of the calibration data (``ctx.golden`` has
    them again afterwards): other calibration data must not make export and simplify cache misses.
    """
    source = Artifact(ArtifactKind.TORCH, None, "", ctx.input_specs,
                      tuple(TensorSpec(n, (), "") for n in ctx.output_names))
    golden = ctx.golden
    remaining = list(fallbacks)
    try:
        ctx.golden = _without_calibration_rows(golden)
        while True:
            try:
                return prefix.run(source, ctx, report.passes, instruments)
            except PassError as error:
                if not remaining or error.pass_name != "export":
                    raise
                failed = report.passes.pop()  # the failed dynamic export is replaced by the next fallback
                fallback = remaining.pop(0)
                io = fallback.io
                _warn(fallback.warning(f"no exporter could export it with {fallback.dropped} ({failed.error})"),
                      report, ctx.log)
                ctx.input_specs, ctx.dynamic = io.specs, io.dims
                golden = _golden(golden_source.reference, io, golden_source.rows)
                ctx.golden = _without_calibration_rows(golden)
                source = replace(source, inputs=io.specs)
    finally:
        ctx.golden = golden


def _without_calibration_rows(golden: Any) -> Any:
    """The golden data without the cases held out of the calibration data."""
    from optpipe.compare.golden import SOURCE_CALIBRATION, GoldenData

    return GoldenData([case for case in golden.cases if case.source != SOURCE_CALIBRATION])


def _warn(warning: str, report: Report, log: Callable[[str], None]) -> None:
    """One warning, on the console and in report.json."""
    log(f"optpipe: warning: {warning}")
    report.warnings.append(warning)


@dataclass(frozen=True)
class _GoldenSource:
    """What golden data is made from again when an export falls back to fewer dynamic axes."""

    reference: Any  # the PyTorch reference runner
    rows: Any  # the held-out real rows (compare.golden.real_row_sets)


@dataclass(frozen=True)
class _RecordInputs:
    """What recording a build needs besides its context: the options and the facts gathered before the plan ran."""

    options: BuildOptions
    precisions: tuple[str, ...]
    reference: Any  # the PyTorch reference runner (task accuracy compares against it)
    eval_set: Any  # labelled eval data, or None
    next_step: Any  # a split build's next step, or None
    provenance: Any
    started: Any
    holdout: Any  # the calibration rows held out for parity, or None
    memory: Callable[[], Any]  # report.memory, with the peaks measured until it is called


def _run_and_record(onnx_artifact: Artifact, prefix: Pipeline, plan: BuildPlan, ctx: BuildContext, report: Report,
                    instruments: Sequence[Instrument], record: _RecordInputs, capture: Any) -> None:
    """Run the plan after the shared prefix, then record the report, report.html and manifest.json in staging."""
    from optpipe.builder.selection import select_variant
    from optpipe.compare.task_accuracy import AccuracyCheck
    from optpipe.precision.holdout import SEED

    options, precisions, reference, eval_set = record.options, record.precisions, record.reference, record.eval_set
    next_step, provenance, started, holdout = record.next_step, record.provenance, record.started, record.holdout
    accuracy = None
    if eval_set is not None and plan.engine:
        assert ctx.golden is not None
        accuracy = AccuracyCheck(eval_set, reference, {k: v.shape for k, v in ctx.golden.cases[0].outputs.items()},
                                 ctx.output_names, ctx.input_specs, ctx.dynamic, options.eval.max_accuracy_drop)
        report.accuracy = accuracy.record()
    run = PlanRun(ctx, report, instruments, lambda precision: onnx_artifact.derive(precision=precision), accuracy,
                  lambda final: ctx.target.runner(final, ctx.threads), require_judged=options.require_judged)
    report.variants.extend(run_plan(plan, run))
    if plan.engine:
        serving = report.benchmark.serving if report.benchmark is not None else ()  # rank at real lengths
        report.selected = select_variant([v.to_dict() for v in report.variants], options.auto, serving)
    report.warnings.extend(w for record in report.passes for w in record.warnings)
    if not plan.engine:
        report.status = "split"
        report.next_step = next_step
    report.build = BuildRecord(
        inputs=ctx.input_specs, outputs=ctx.output_names, dynamic=ctx.dynamic, precisions=tuple(precisions),
        tolerances=options.tolerances.as_dict(),
        output_kinds=output_kinds_of(ctx.golden, options.output_kinds.as_dict(), ctx.output_producers)
        if ctx.golden else {},
        onnx=str(onnx_artifact.path.relative_to(ctx.work_dir)) if onnx_artifact.path else None,
        trt=options.trt.set_values(), options=options.to_dict(),
        holdout=holdout.record(options.calibration.source) if holdout else None,
        row_split=row_split_record(ctx.golden, SEED) if ctx.golden else None,
    )
    if options.sweep.enabled and plan.engine and any(v.passed for v in report.variants):
        from optpipe.builder.sweep import sweep_report

        report.sweep = sweep_report(report, ctx.work_dir, ctx.model, options.sweep.seconds,
                                    options.sweep.latency_budget_ms, ctx.log).to_dict()
    from optpipe.report.provenance import provenance_record

    report.provenance = provenance_record(ctx.model, provenance, started)
    report.memory = record.memory()
    report.write(ctx.work_dir / "report.json")
    from optpipe.report.manifest import finish_build_dir  # report.html, then manifest.json listing every file

    ran = [v.pipeline for v in plan.variants]
    if plan.fallback is not None and any(v.fallback for v in report.variants):
        ran.append(plan.fallback.pipeline)  # listed with the build's pipelines in manifest.json
    capture.stop()  # build.log is complete before the manifest hashes it
    finish_build_dir(ctx.work_dir, report, ctx, [prefix, *ran])


def _write_back_calib_cache(options: BuildOptions, out: Path, log: Callable[[str], None]) -> None:
    """Update ``--calib-cache FILE`` with the published build's ranges (only after a build that finished)."""
    from optpipe.passes.int8 import CACHE_NAME
    from optpipe.precision.calib_cache import write_back

    target, built = options.calibration.cache, out / "int8" / CACHE_NAME
    if not target or not built.is_file():
        return
    try:
        write_back(built, Path(target))
    except OSError as error:  # the build is published; the cache is a convenience
        log(f"optpipe: warning: could not update --calib-cache {target}: {error}")


def _warn_meaningless_reference(cases: Sequence[Any], report: Report, log: Callable[[str], None]) -> None:
    """Warn (console and report.json) when a reference output is zero, constant or ignores the input."""
    from optpipe.compare.reference_checks import reference_warnings

    for warning in reference_warnings(cases):
        log(f"optpipe: warning: {warning}")
        report.warnings.append(warning)


def _bind_by_name(model: Any, names: Sequence[str]) -> Any:
    """The model, wrapped to take its inputs as keyword arguments when they must bind by name (not position)."""
    if not hasattr(model, "forward"):
        return model
    from optpipe.model.input_binding import bind_inputs

    return bind_inputs(model, names)
