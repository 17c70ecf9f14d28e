"""``optpipe.build``: the whole compile, from an in-memory module to a report.

Order of work: check the output directory and the target, derive tensor
specs, compute golden data with PyTorch, run the shared prefix (export,
simplify) once, then one variant pipeline per precision (precision pass,
engine, validate, benchmark). Every pipeline is assembled (and kind-checked)
before the first pass runs. When the target's engine cannot be built on this
machine (TensorRT without a GPU), the build stops after every CPU stage and
the report says how to finish (a split build, exit 3).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from optpipe.artifact import Artifact, ArtifactKind
from optpipe.build_dir import check_out_dir, discard, make_staging, publish
from optpipe.errors import EnvironmentUnavailable, PassError, UserInputError
from optpipe.golden import make_golden
from optpipe.input_parsing import DynamicArg, resolve_input_specs
from optpipe.pass_base import BuildContext, Pass
from optpipe.pipeline import Instrument, PassRecord, Pipeline
from optpipe.report import Report
from optpipe.target import Target, get_target
from optpipe.tensor_spec import DynamicDim, TensorSpec

PRECISIONS = ("fp32", "fp16", "int8", "int8-dynamic")


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    return value.detach().cpu().numpy()


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


def precision_pass(precision: str, target: Target, options: Mapping[str, Any]) -> Pass | None:
    """The pass that lowers the simplified FP32 ONNX to ``precision`` (None for fp32)."""
    if precision == "fp32":
        return None
    if precision == "fp16":
        from optpipe.passes.fp16 import Fp16Pass

        return Fp16Pass.from_options(options)
    if precision == "int8":
        from optpipe.passes.int8 import Int8Pass

        return Int8Pass.from_options(options, target)
    if precision == "int8-dynamic":
        from optpipe.passes.int8_dynamic import Int8DynamicPass

        return Int8DynamicPass.from_options(options, target)
    raise UserInputError(f"unknown precision '{precision}'; choose from {', '.join(PRECISIONS)}")


def variant_passes(precision: str, target: Target, options: Mapping[str, Any], engine: bool) -> list[Pass]:
    """Precision pass (if any), then engine, validate and benchmark when the engine can be built."""
    from optpipe.passes.benchmark import BenchmarkConfig, BenchmarkPass
    from optpipe.passes.validate import ValidateConfig, ValidatePass
    from optpipe.registry import engine_pass, pre_engine_passes

    passes: list[Pass] = []
    lowering = precision_pass(precision, target, options)
    if lowering is not None:
        passes.append(lowering)
    passes.extend(pre_engine_passes(target))
    if engine:
        passes.append(engine_pass(target, options))
        passes.append(ValidatePass(ValidateConfig(tolerances=dict(options.get("tolerances") or {}))))
        if options.get("benchmark", True):
            passes.append(BenchmarkPass(BenchmarkConfig(batch=options.get("benchmark_batch"))))
    return passes


def _relative(path: Path | None, root: Path) -> str | None:
    return str(path.relative_to(root)) if path is not None else None


def build(
    model: Any,
    example_inputs: Sequence[Any] | Mapping[str, Any],
    *,
    out_dir: str | Path,
    target: str = "cpu",
    precisions: Sequence[str] = ("fp32",),
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic: Sequence[DynamicDim | DynamicArg] = (),
    overwrite: bool = False,
    tolerances: Mapping[str, Mapping[str, float]] | None = None,
    threads: int | None = None,
    benchmark: bool = True,
    benchmark_batch: int | None = None,
    heldout_inputs: Mapping[str, np.ndarray] | None = None,
    exporter: str = "auto",
    model_name: str = "",
    log: Callable[[str], None] = print,
    instruments: Sequence[Instrument] = (),
    pass_options: Mapping[str, Mapping[str, Any]] | None = None,
    **precision_options: Any,
) -> Report:
    """Compile ``model`` for ``target`` and return the report (also written to ``out_dir/report.json``).

    ``example_inputs`` is a tuple of tensors in ``forward()`` order, or a dict
    name -> tensor. ``dynamic`` declares dynamic dimensions: ``DynamicDim("batch",
    1, 8, 32)`` makes axis 0 of every input dynamic; a
    :class:`~optpipe.input_parsing.DynamicArg` names other axes. ``pass_options`` maps a pass name
    (``optpipe passes``) to fields of its Config, e.g. ``{"simplify": {"atol": 1e-3}}``; they win over
    the values set by the other arguments (see :mod:`optpipe.pass_options`).
    Raises :class:`~optpipe.errors.OptpipeError` for
    user and environment errors; a failed parity gate is *not* an exception but
    ``report.passed is False`` (``report.exit_code == 1``).
    """
    from optpipe.pass_options import apply_pass_options, check_pass_options
    from optpipe.passes.export_onnx import ExportConfig, ExportOnnx
    from optpipe.passes.simplify import SimplifyOnnx
    from optpipe.runtime import TorchRunner

    per_pass = check_pass_options(pass_options)  # before anything runs: a typo fails now
    if "tolerances" in per_pass.get("validate", {}):  # the precision gates apply the same tolerances
        given = dict(tolerances or {})
        for name, fields in per_pass["validate"]["tolerances"].items():
            given[name] = {**given.get(name, {}), **fields}
        tolerances = given
    if per_pass.get("engine-trt"):  # recorded in report.json, so `optpipe engine` uses them too
        precision_options["trt"] = {**(precision_options.get("trt") or {}), **per_pass["engine-trt"]}
    out = Path(out_dir)
    target_obj = get_target(target)
    auto = list(precisions) == ["auto"]  # build the target's candidates, keep the fastest that passes
    if auto:
        from optpipe.precision.accuracy import auto_precisions

        precisions = auto_precisions(target_obj.name)
    precisions = list(dict.fromkeys(precisions))  # "fp32,fp32" builds one fp32 variant and records one
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown or not precisions:
        raise UserInputError(f"unknown precision(s) {unknown}; choose from {', '.join(PRECISIONS)}")
    if isinstance(example_inputs, Mapping):
        input_names = list(example_inputs)
        example_inputs = list(example_inputs.values())
    examples = [_to_numpy(value) for value in example_inputs]
    names = list(input_names) if input_names else [f"input_{i}" for i in range(len(examples))]
    if len(names) != len(examples):
        raise UserInputError(f"{len(names)} input names for {len(examples)} example inputs")
    dynamic_args = [d if isinstance(d, DynamicArg) else DynamicArg(d) for d in dynamic]
    specs = resolve_input_specs(names, [(e.shape, str(e.dtype)) for e in examples], dynamic_args)
    dims = tuple(arg.dim for arg in dynamic_args)
    batch_dim = next((a.dim for a in dynamic_args if a.dim.axis_name == "batch" and a.axes is None), None)
    if benchmark and benchmark_batch is not None:
        _check_benchmark_batch(benchmark_batch, specs, dims)
    check_out_dir(out, overwrite)
    engine_available = True
    next_step: str | None = None
    try:
        target_obj.check_available()
    except EnvironmentUnavailable as error:
        engine_available = False
        next_step = str(error)  # the reason; the full instruction is made once the options are known

    with contextlib.suppress(NotImplementedError):  # a .pt2 program's module() refuses eval(); it is already
        model.eval()
    model_type = type(model).__name__
    model = _bind_by_name(model, names)
    reference = TorchRunner(model, tuple(names), tuple(output_names or ()))
    example_feed = dict(zip(names, examples, strict=True))
    import torch

    from optpipe.runtime import default_output_names, flatten_outputs

    with torch.inference_mode():
        raw = model(*(torch.from_numpy(np.ascontiguousarray(e)) for e in examples))
    first = flatten_outputs(raw)
    outputs = tuple(output_names) if output_names else default_output_names(raw)  # dict keys, else output_<i>
    if len(outputs) != len(first):
        raise UserInputError(f"{len(outputs)} output names for a model with {len(first)} outputs")
    reference.output_names = outputs
    _check_tolerances(tolerances or {}, outputs)
    options = dict(precision_options, tolerances=tolerances or {}, benchmark=benchmark,
                   benchmark_batch=benchmark_batch, out_dir=str(out))  # out_dir: int8 reuses its ranges
    if options.get("max_accuracy_drop") is not None and options.get("eval_data") is None:
        raise UserInputError("--max-accuracy-drop needs labelled eval data: --eval-data FILE.npz or eval_data() "
                             "in the model file")
    if options.get("eval_data") is not None:  # names, labels, dtypes and shapes vs the input specs, before any work
        from optpipe.precision.accuracy import check_eval_set

        eval_inputs, eval_labels = options["eval_data"]
        options["eval_data"] = check_eval_set(eval_inputs, eval_labels, names,
                                              str(options.get("eval_origin") or "eval_data"), specs)
    if options.get("calib_cache") and "int8" in precisions:  # corrupt or unwritable: fail before any work
        from optpipe.precision.calib_cache import check_cache_file

        check_cache_file(Path(str(options["calib_cache"])))
    # Assemble every pipeline before running anything: a mis-assembled build fails now.
    prefix = Pipeline([ExportOnnx(ExportConfig(exporter=exporter)), SimplifyOnnx()], variant="shared")
    variants: dict[str, Pipeline] = {}
    unavailable: dict[str, str] = {}  # auto candidates this build cannot make (e.g. int8 without calibration data)
    for precision in precisions:
        try:
            variants[precision] = Pipeline(
                variant_passes(precision, target_obj, options, engine_available), variant=precision
            )
        except UserInputError as error:
            if not auto:  # an explicitly requested precision that cannot be built is the user's error
                raise
            unavailable[precision] = f"not a candidate here: {error}"
    # When every requested precision is skipped (nothing to lower), fp32 is built and validated instead.
    fallback = None
    if not auto and "fp32" not in variants:
        fallback = Pipeline(variant_passes("fp32", target_obj, options, engine_available), variant="fp32")
    for pipeline in (prefix, *variants.values(), *([fallback] if fallback else [])):
        apply_pass_options(pipeline.passes, per_pass)
    if not engine_available:
        from optpipe.finish import split_next_step  # also checks the TensorRT options now, not on the GPU box

        next_step = split_next_step(out, str(next_step), options)

    staging = make_staging(out)
    report = Report(target=target_obj.name, model=model_name or model_type)
    if not benchmark and benchmark_batch is not None:
        report.warnings.append(f"--batch {benchmark_batch} is ignored: --no-benchmark skips the benchmark")
    try:
        golden = make_golden(reference, example_feed, batch_dim, dict(heldout_inputs or {}) or None,
                             dynamic_axes=[(a.dim, a.axes) for a in dynamic_args if a.axes is not None])
        golden.save(staging / "golden")
        _warn_meaningless_reference(golden.cases, report, log)
        ctx = BuildContext(
            work_dir=staging,
            target=target_obj,
            input_specs=specs,
            output_names=outputs,
            dynamic=dims,
            model=model,
            example_inputs=tuple(torch.from_numpy(np.ascontiguousarray(e)) for e in examples),
            golden=golden,
            threads=threads,
            log=log,
            options=options,
        )
        all_instruments = [ProgressInstrument(log), *instruments]
        source = Artifact(ArtifactKind.TORCH, None, "", specs, tuple(TensorSpec(n, (), "") for n in outputs))
        log(f"optpipe: building {report.model} for target '{target_obj.name}' ({', '.join(precisions)})")
        onnx_artifact = prefix.run(source, ctx, report.passes, all_instruments)
        from optpipe.precision import VariantSkipped
        from optpipe.precision.accuracy import AccuracyCheck, select_variant, skipped_variant

        accuracy = None
        if options.get("eval_data") is not None and engine_available:
            accuracy = AccuracyCheck(options["eval_data"], reference,
                                     {k: v.shape for k, v in golden.cases[0].outputs.items()},
                                     outputs, specs, dims, options.get("max_accuracy_drop"))
            report.accuracy = accuracy.record()
        for precision, pipeline in variants.items():
            log(f"[{precision}]")
            start = len(report.passes)
            try:
                final = pipeline.run(onnx_artifact.derive(precision=precision), ctx, report.passes, all_instruments)
            except PassError as error:  # a precision pass with nothing to lower skips its variant
                if not isinstance(error.cause, VariantSkipped):
                    raise
                if "fp32" in variants:
                    error.cause.reason += "; the fp32 variant is the artifact to use"
                report.variants.append(skipped_variant(precision, error.cause, report.passes[start:]))
                continue
            record = _variant_record(precision, final, report.passes[start:], staging, engine_available)
            if accuracy is not None:
                accuracy.apply(record, target_obj.runner(final, threads))
            record["required"] = not auto  # auto: a rejected candidate does not fail the build
            report.variants.append(record)
        if fallback is not None and report.variants and all(v["status"] == "skipped" for v in report.variants):
            skipped = ", ".join(v["precision"] for v in report.variants)
            report.warnings.append(f"every requested variant was skipped ({skipped}): fp32 was built and "
                                   "validated as the fallback")  # fmt: skip
            log(f"[fp32] (fallback: {skipped} skipped)")
            start = len(report.passes)
            final = fallback.run(onnx_artifact.derive(precision="fp32"), ctx, report.passes, all_instruments)
            record = _variant_record("fp32", final, report.passes[start:], staging, engine_available)
            if accuracy is not None:
                accuracy.apply(record, target_obj.runner(final, threads))
            record["required"] = True
            record["fallback"] = True
            report.variants.append(record)
            variants["fp32"] = fallback  # listed with the build's pipelines in manifest.json
        for precision, reason in unavailable.items():
            report.variants.append(skipped_variant(precision, VariantSkipped(reason), []))
        if engine_available:
            report.selected = select_variant(report.variants, auto)
        report.baseline = next(
            (v["torch_latency"] for v in report.variants if v.get("torch_latency")), None
        )
        report.warnings.extend(w for record in report.passes for w in record.warnings)
        if not engine_available:
            report.status = "split"
            report.next_step = next_step
        report.build = _build_record(specs, outputs, dims, precisions, options, onnx_artifact, staging)
        report.write(staging / "report.json")
        from optpipe.manifest import finish_build_dir  # report.html, then manifest.json listing every file

        finish_build_dir(staging, report, ctx, [prefix, *variants.values()])
        publish(staging, out)
    except BaseException:
        discard(staging)
        raise
    report.out_dir = out
    _write_back_calib_cache(options, out, log)
    return report


def _write_back_calib_cache(options: Mapping[str, Any], out: Path, log: Callable[[str], None]) -> None:
    """Update ``--calib-cache FILE`` with the published build's ranges (only after a build that finished)."""
    from optpipe.passes.int8 import CACHE_NAME
    from optpipe.precision.calib_cache import write_back

    target, built = options.get("calib_cache"), out / "int8" / CACHE_NAME
    if not target or not built.is_file():
        return
    try:
        write_back(built, Path(str(target)))
    except OSError as error:  # the build is published; the cache is a convenience
        log(f"optpipe: warning: could not update --calib-cache {target}: {error}")


def _warn_meaningless_reference(cases: Sequence[Any], report: Report, log: Callable[[str], None]) -> None:
    """Warn (console and report.json) when a reference output is zero, constant or ignores the input."""
    from optpipe.reference_checks import reference_warnings

    for warning in reference_warnings(cases):
        log(f"optpipe: warning: {warning}")
        report.warnings.append(warning)


def _bind_by_name(model: Any, names: Sequence[str]) -> Any:
    """The model, wrapped to take its inputs as keyword arguments when they must bind by name (not position)."""
    if not hasattr(model, "forward"):
        return model
    from optpipe.input_binding import bind_inputs

    return bind_inputs(model, names)


def _check_tolerances(tolerances: Mapping[str, Mapping[str, float]], outputs: Sequence[str]) -> None:
    """Tolerance overrides name real outputs (or ``*``) and Tolerance fields, with finite values: before export."""
    import dataclasses
    import math

    from optpipe.parity import Tolerance

    unknown = sorted(set(tolerances) - set(outputs) - {"*"})
    if unknown:
        raise UserInputError(
            f"tolerance given for unknown output(s) {', '.join(unknown)}; the outputs are {', '.join(outputs)}"
        )
    known = {f.name for f in dataclasses.fields(Tolerance)}
    for output, values in tolerances.items():
        for field, value in values.items():
            if field not in known:
                raise UserInputError(f"unknown tolerance field '{field}' for output '{output}'; expected one of "
                                     f"{', '.join(sorted(known))}")
            try:
                finite = not isinstance(value, bool) and math.isfinite(float(value))
            except (TypeError, ValueError):
                finite = False
            if not finite:
                raise UserInputError(f"tolerance {output}:{field}={value} must be a finite number")


def _check_benchmark_batch(batch: int, specs: Sequence[TensorSpec], dims: Sequence[DynamicDim]) -> None:
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


def _variant_record(
    precision: str, final: Artifact, records: list[PassRecord], root: Path, engine_built: bool
) -> dict[str, Any]:
    """One entry of ``report.variants`` from the variant pipeline's records."""
    metrics: dict[str, Any] = {}
    for record in records:
        metrics[record.name] = record.metrics
    parity = metrics.get("validate", {}).get("parity")
    bench = metrics.get("benchmark", {})
    onnx_path = final.extra.get("source_onnx") if final.kind is ArtifactKind.ENGINE else final.path
    variant: dict[str, Any] = {
        "precision": precision,
        "status": "built" if engine_built else "pending",
        "artifact": _relative(final.path, root) if final.kind is ArtifactKind.ENGINE else None,
        "onnx": _relative(Path(str(onnx_path)), root) if onnx_path else None,
        "passed": bool(parity and parity["passed"]),
        "failures": list(parity["failures"]) if parity else [],
        "parity": parity,
        "latency": bench.get("latency"),
        "torch_latency": bench.get("torch_latency"),
        "speedup_vs_torch": bench.get("speedup_vs_torch"),
        "gpu_memory": bench.get("gpu_memory"),
        "passes": {r.name: r.metrics for r in records if r.name not in ("validate", "benchmark")},
    }
    return variant


def _build_record(
    specs: Sequence[TensorSpec],
    outputs: Sequence[str],
    dynamic: Sequence[DynamicDim],
    precisions: Sequence[str],
    options: Mapping[str, Any],
    onnx_artifact: Artifact,
    root: Path,
) -> dict[str, Any]:
    """What a later step (``optpipe engine``, ``optpipe verify``) needs to resume from the directory."""
    return {
        "inputs": [s.to_dict() for s in specs],
        "outputs": list(outputs),
        "dynamic": [d.to_dict() for d in dynamic],
        "precisions": list(precisions),
        "tolerances": options.get("tolerances") or {},
        "onnx": _relative(onnx_artifact.path, root),
        "golden": "golden",
        "trt": dict(options.get("trt") or {}),  # TensorRT build options, reused by `optpipe engine`
    }
