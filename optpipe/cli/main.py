"""The ``optpipe`` command line: a thin click layer over the library.

Each command parses its options, calls the library, prints the result, and
exits with the code the library decided. Errors a user can cause arrive as
:class:`~optpipe.core.errors.OptpipeError` and are printed as one line (no
traceback) with their exit code. torch is never imported at module level, so
``optpipe --help`` works without it.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from optpipe import __version__
from optpipe.cli.help import BuildCommand
from optpipe.core.errors import (
    EXIT_ENVIRONMENT,
    EXIT_GATE_FAILED,
    EXIT_OK,
    EXIT_UNJUDGED,
    EXIT_USAGE,
    OptpipeError,
    UserInputError,
    one_line,
)
from optpipe.core.value_checks import FiniteFloatRange, WholeIntRange
from optpipe.matrix.config_file import CONFIG_META, JSON_SINK
from optpipe.report.junit import junit_on_error

if TYPE_CHECKING:
    from optpipe.builder.options import BuildOptions, TensorRTOptions
    from optpipe.core.records import VariantResult
    from optpipe.matrix.executors import Executor
    from optpipe.matrix.tasks import MatrixResult, ModelResult, ModelTask, ProgressCallback

F = TypeVar("F", bound=Callable[..., Any])

EXIT_CODES_HELP = f"""
\b
Exit codes:
  {EXIT_OK}  build finished and every gate passed
  {EXIT_GATE_FAILED}  a parity/accuracy gate failed (artifacts kept, report.json says which)
  {EXIT_UNJUDGED}  unjudged: no gate failed but one could not judge (too few rows); see --allow-unjudged
  {EXIT_USAGE}  usage or input error (bad model spec, shapes, weights, files)
  {EXIT_ENVIRONMENT}  environment error (the target needs hardware or a package that is missing)
"""


def reports_errors(func: F) -> F:
    """Turn OptpipeError into one line on stderr and its exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except OptpipeError as error:
            click.echo(f"optpipe: error: {one_line(str(error))}", err=True)
            sys.exit(error.exit_code)
        except KeyboardInterrupt:
            click.echo("optpipe: interrupted; nothing was written to the output directory", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]  # functools.wraps keeps the signature


class OneLineErrors(click.Group):
    """click's usage errors (four lines: usage, hint, blank, error) as the one ``optpipe: error:`` line, exit 2."""

    def main(self, *args: Any, **kwargs: Any) -> Any:  # always non-standalone: errors are ours to print
        kwargs["standalone_mode"] = False
        try:
            return super().main(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError as error:  # plain `optpipe`: the help, not an error
            click.echo(error.ctx.get_help())
            sys.exit(EXIT_OK)
        except click.ClickException as error:
            context = getattr(error, "ctx", None)  # usage errors know their command
            where = f" (see '{context.command_path} --help')" if context is not None else ""
            message = one_line(error.format_message())
            click.echo(f"optpipe: error: {message}{where}", err=True)
            sys.exit(EXIT_USAGE)
        except click.Abort:
            click.echo("optpipe: interrupted", err=True)
            sys.exit(130)


def _log_file(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """``--log-file``: refused before any work when it cannot be written."""
    return _writable_file(ctx, param, value)


@click.group(cls=OneLineErrors, help="optpipe compiles trained PyTorch models into fast, verified runtime artifacts.\n"
             + EXIT_CODES_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="optpipe")
@click.option("-v", "--verbose", count=True, help="More messages (-v: debug).")
@click.option("-q", "--quiet", count=True, help="Fewer messages (-q: warnings and results only, -qq: errors).")
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE", callback=_log_file,
              help="Also write every message, with timestamps, to FILE.")
def main(verbose: int, quiet: int, log_file: Path | None) -> None:
    """Entry point of the ``optpipe`` command."""
    from optpipe.core.console import configure_cli_logging

    configure_cli_logging(verbose - quiet, log_file)


class PrecisionsType(click.ParamType):
    """``--precision fp32,int8`` (or a config file's list): :func:`optpipe.builder.options.parse_precisions`."""

    name = "precisions"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, ...]:
        from optpipe.builder.options import parse_precisions
        from optpipe.core.errors import UserInputError

        try:
            return parse_precisions(value)
        except UserInputError as error:
            self.fail(str(error), param, ctx)


class ToleranceType(click.ParamType):
    """``--tolerance OUTPUT:FIELD=VALUE`` (or a config file's ``(output, field, value)``), checked by the one rule.

    The rule is :func:`optpipe.builder.options.check_tolerance`: a known field, a finite number >= 0,
    a fraction <= 1 for the ``min_*`` fields.
    """

    name = "tolerance"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, str, float]:
        from optpipe.builder.options import check_tolerance, parse_tolerance_text
        from optpipe.core.errors import UserInputError

        try:
            if isinstance(value, str):
                return parse_tolerance_text(value)
            output, field, number = value
            return str(output), str(field), check_tolerance(str(output), str(field), number)
        except UserInputError as error:
            self.fail(str(error), param, ctx)
        except (TypeError, ValueError):
            self.fail(f"expected OUTPUT:FIELD=VALUE, got {value!r}", param, ctx)


class OutputKindType(click.ParamType):
    """``--output-kind NAME=KIND`` (or a config file's ``(output, kind)``): :mod:`optpipe.compare.output_kinds`."""

    name = "output_kind"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, str]:
        from optpipe.builder.options import OutputKinds
        from optpipe.core.errors import UserInputError

        try:
            return OutputKinds.parse([value]).items[0]
        except UserInputError as error:
            self.fail(str(error), param, ctx)


def _writable_file(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """Refuse a file option that could not be written, before any work (e.g. ``--junit`` under a file)."""
    from optpipe.core.safe_output import output_refusal

    reason = output_refusal(value) if value is not None else None
    if reason:
        raise click.BadParameter(f"cannot write '{value}': {reason}", ctx=ctx, param=param)
    return value


HARDWARE_COMPAT_LEVELS = ("ampere_plus", "same_compute_capability")


def trt_build_options(func: F) -> F:
    """Add the TensorRT engine options and pass them on as one ``trt_options`` (a TensorRTOptions).

    Shared by ``optpipe build`` and ``optpipe engine`` so both spell them the
    same; options left out are ``None`` (the default, or the value recorded by
    the split build).
    """

    @functools.wraps(func)
    def wrapper(*args: Any, timing_cache: Path | None, opt_level: int | None, workspace: int | None,
                hardware_compat: str | None, version_compatible: bool, **kwargs: Any) -> Any:
        from optpipe.builder.options import TensorRTOptions

        kwargs["trt_options"] = TensorRTOptions(
            timing_cache=str(timing_cache) if timing_cache else None,
            builder_optimization_level=opt_level,
            workspace_bytes=workspace * (1 << 20) if workspace else None,
            hardware_compatibility=hardware_compat,
            version_compatible=version_compatible or None,
        )
        return func(*args, **kwargs)

    options = [
        click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
                     help="[tensorrt] TensorRT timing cache: reused when written by the same TensorRT "
                     "version on the same GPU architecture (else set aside), updated after the build."),
        click.option("--opt-level", type=WholeIntRange(0, 5), metavar="N",
                     help="[tensorrt] Builder optimization level 0-5 (default 3; higher builds slower, may "
                     "run faster)."),
        click.option("--workspace", type=WholeIntRange(min=1), metavar="MB",
                     help="[tensorrt] Cap on the builder's workspace memory, in MiB (default: TensorRT's)."),
        click.option("--hardware-compat", type=click.Choice(HARDWARE_COMPAT_LEVELS), is_flag=False,
                     flag_value="ampere_plus", default=None,
                     help="[tensorrt] Build an engine that runs on other GPU architectures: ampere_plus (the "
                     "value when none is given; compute capability >= 8.0) or same_compute_capability."),
        click.option("--version-compatible", is_flag=True, default=None,
                     help="[tensorrt] Build an engine that later TensorRT releases of the same major version "
                     "can run."),
    ]
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper  # type: ignore[return-value]  # functools.wraps keeps the signature


def precision_build_options(func: F) -> F:
    """Add the calibration, accuracy-guard and eval options, passed on as one ``precision_opts`` dict."""

    @functools.wraps(func)
    def wrapper(*args: Any, calib_data: str | None, synthetic_calib: bool, calib_method: str,
                calib_cache: Path | None, eval_data: Path | None, max_accuracy_drop: float | None,
                guard_max_keep: float | None, no_guard: bool, **kwargs: Any) -> Any:
        kwargs["precision_opts"] = {
            "calib_data": calib_data, "synthetic_calib": synthetic_calib, "calib_method": calib_method,
            "calib_cache": calib_cache, "eval_data": eval_data,
            "max_accuracy_drop": max_accuracy_drop, "guard_max_keep": guard_max_keep, "no_guard": no_guard,
        }  # fmt: skip
        return func(*args, **kwargs)

    options = [
        click.option("--calib-data", metavar="SOURCE",
                     help="[int8] Calibration inputs: FILE.npz (input-name keys), a directory of .npy/.npz, or "
                     "FILE.py:NAME. Default: calibration_data() in the model file."),
        click.option("--synthetic-calib", is_flag=True,
                     help="[int8] Calibrate on random inputs when there is no data (flagged in the report)."),
        click.option("--calib-method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax",
                     show_default=True, help="[int8] How activation ranges are computed."),
        click.option("--calib-cache", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
                     help="[int8] Calibration cache (JSON ranges keyed by model and data hashes): reused when "
                     "the key matches, rewritten otherwise."),
        click.option("--eval-data", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE.npz",
                     help="Labelled eval data (input-name keys + 'labels') for task accuracy per variant. "
                     "Default: eval_data() in the model file."),
        click.option("--max-accuracy-drop", type=FiniteFloatRange(min=0), metavar="POINTS",
                     help="Fail a variant whose accuracy is more than POINTS below FP32 PyTorch's."),
        click.option("--guard-max-keep", type=FiniteFloatRange(0, 1), metavar="FRACTION",
                     help="[fp16/int8] Most nodes the accuracy guard may keep in FP32, as a fraction of the "
                     "quantizable nodes (default 0.1)."),
        click.option("--no-guard", is_flag=True,
                     help="[fp16/int8] Do not keep failing nodes in FP32; just report the gate."),
    ]
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper  # type: ignore[return-value]  # functools.wraps keeps the signature


def sweep_budget_options(func: F) -> F:
    """Add ``--sweep-seconds`` and ``--latency-budget`` (the sweep's budget per point and its latency limit)."""
    options = [
        click.option("--sweep-seconds", type=click.FloatRange(min=0, min_open=True), metavar="S",
                     help="[sweep] Timed seconds per runtime at each batch x threads point (default 0.25)."),
        click.option("--latency-budget", type=click.FloatRange(min=0, min_open=True), metavar="MS",
                     help="[sweep] The recommended batch is the one with the highest throughput whose p99 "
                     "latency is within MS milliseconds (default: no limit)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def measure_options(func: F) -> F:
    """Add output kinds, the guard's time budget and the benchmark's budget, merged into ``precision_opts``.

    Apply below :func:`precision_build_options` (which creates ``precision_opts``); the keys are
    :func:`~optpipe.builder.options.parse_build_options` keywords.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, output_kinds: tuple[tuple[str, str], ...], guard_seconds: float | None,
                bench_seconds: float | None, warmup: int | None, iterations: int | None, **kwargs: Any) -> Any:
        kwargs["precision_opts"] = {
            **kwargs.get("precision_opts", {}), "output_kinds": output_kinds, "guard_seconds": guard_seconds,
            "bench_seconds": bench_seconds, "warmup": warmup, "iterations": iterations,
        }  # fmt: skip
        return func(*args, **kwargs)

    options = [
        click.option("--output-kind", "output_kinds", type=OutputKindType(), multiple=True, metavar="NAME=KIND",
                     help="What an output means: logits, multilabel, embedding, regression or generic ('*' = every "
                     "output). Picks its gates (top-1 for logits, decisions for multilabel, NRMSE for regression). "
                     "Default: inferred from the name, the graph and the values, else generic."),
        click.option("--guard-seconds", type=FiniteFloatRange(min=0, min_open=True), metavar="S",
                     help="[int8/fp16] Time budget of the accuracy guard per variant (default 60); when spent, "
                     "the best variant so far is reported with why it stopped."),
        click.option("--bench-seconds", type=FiniteFloatRange(min=0, min_open=True), metavar="S",
                     help="Timed seconds per runtime in the benchmark (default 2)."),
        click.option("--warmup", type=WholeIntRange(min=0), metavar="N",
                     help="Untimed calls per runtime before timing (default 5)."),
        click.option("--iterations", type=WholeIntRange(min=1), metavar="N",
                     help="Fewest timed calls per runtime, even past --bench-seconds (default 10)."),
    ]
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper  # type: ignore[return-value]  # functools.wraps keeps the signature


def _with_model_file_data(options: BuildOptions, opts: dict[str, Any], prepared: Any) -> BuildOptions:
    """The options with the model file's calibration and eval data where the flags gave none."""
    from dataclasses import replace

    from optpipe.builder.options import CalibrationSource, EvalOptions
    from optpipe.builder.selection import load_eval_npz

    calibration, evaluation = options.calibration, options.eval
    if not opts.get("calib_data") and prepared.calibration:
        calibration = CalibrationSource.parse(prepared.calibration, calibration.synthetic, calibration.method,
                                              calibration.cache)
    if getattr(prepared, "input_ranges", None):  # --input LOW..HIGH: synthetic calibration draws integers there
        calibration = replace(calibration, input_ranges=CalibrationSource.parse(
            input_ranges=prepared.input_ranges).input_ranges)
    if opts.get("eval_data") is not None:
        evaluation = EvalOptions(load_eval_npz(opts["eval_data"], prepared.input_names), str(opts["eval_data"]),
                                 evaluation.max_accuracy_drop)
    elif prepared.eval_set is not None:
        evaluation = EvalOptions(prepared.eval_set, "from eval_data() in the model file", evaluation.max_accuracy_drop)
    return replace(options, calibration=calibration, eval=evaluation)


@main.command(cls=BuildCommand, epilog=EXIT_CODES_HELP)
@click.argument("model", required=False)
@click.option("--out", "out_dir", type=click.Path(path_type=Path),
              help="Output directory (required unless a config file sets out).")
@click.option("--weights", type=click.Path(path_type=Path), help="State dict: .pt/.pth (weights only) or .safetensors.")
@click.option("--input", "inputs", multiple=True, metavar="NAME:SHAPE[:DTYPE[:LOW..HIGH]]",
              help="Example input, e.g. x:2x3x224x224 or ids:2x128:int64:0..1000. Repeat per input, in "
              "forward() order. Default: example_inputs() in the model's file.")
@click.option("--dynamic", "dynamics", multiple=True, metavar="NAME=MIN:OPT:MAX[@INPUT.AXIS,...]",
              help="Dynamic dimension; batch=1:8:32 makes axis 0 of every input dynamic. Default: a dynamic "
              "batch (axis 0 of every input, 1 to 64) when the model can vary it.")
@click.option("--static-batch", is_flag=True,
              help="Keep axis 0 at the example's batch size (the artifact then accepts only that batch).")
@click.option("--static-seq", is_flag=True,
              help="Keep token inputs (input_ids, attention_mask, integer NxL inputs) at the example's length. "
              "Default: their axis 1 is dynamic, from the data's shortest real length to the model's position "
              "limit.")
@click.option("--sweep", is_flag=True,
              help="Also time batch 1..max x threads 1..cores for every variant and PyTorch eager (report.json "
              "'sweep', report.html); as `optpipe sweep DIR` does after a build.")
@click.option("--target", default="cpu", show_default=True, type=click.Choice(["cpu", "tensorrt"]))
@click.option("--precision", "precision", type=PrecisionsType(), default="fp32", show_default=True,
              help="Comma-separated precisions to build: fp32, fp16, int8, int8-dynamic (cpu target: no calibration "
              "data); or 'auto': build the target's "
              "candidates and select the fastest that passes its gates.")
@click.option("--output-names", help="Comma-separated output names (default: OUTPUT_NAMES in the model file).")
@click.option("--tolerance", "tolerances", type=ToleranceType(), multiple=True, metavar="OUTPUT:FIELD=VALUE",
              help="Override a parity gate, e.g. logits:min_cosine=0.995 ('*' = every output); atol/rtol >= 0, "
              "min_cosine/min_row_cosine/min_top1/top1_margin in [0, 1] (top1_margin: top-1 counts rows whose "
              "reference top class leads by at least this probability; default 0.05).")
@click.option("--threads", type=WholeIntRange(min=1),
              help="Threads for ONNX Runtime and PyTorch (default: all cores).")
@click.option("--batch", "benchmark_batch", type=WholeIntRange(min=1),
              help="Batch size to benchmark at (default: the example's). Must be within the dynamic batch "
              "range, or equal the example's batch when the batch is static; ignored with a warning under "
              "--no-benchmark.")
@click.option("--no-benchmark", is_flag=True, help="Skip latency measurement.")
@click.option("--exporter", default="auto", show_default=True, type=click.Choice(["auto", "dynamo", "torchscript"]))
@click.option("--fuse", default="auto", show_default=True, metavar="auto|off|MODEL_TYPE",
              help="[cpu] Transformer fusions (ONNX Runtime's transformer optimizer) for --precision auto's fused "
              "variants (fp32+fused, int8-dynamic+fused): 'auto' detects a BERT-like graph, 'off' builds none, or "
              "the optimizer's model type (bert, gpt2, vit, ...).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory (atomically).")
@click.option("--no-strict-weights", is_flag=True, help="Allow missing/unexpected keys in --weights.")
@click.option("--trust-pickle", is_flag=True,
              help="Allow a fully pickled model (.pt/.pth). Unpickling runs code from the file: "
              "only for files you trust.")
@click.option("--json", "as_json", is_flag=True, help="Print report.json on stdout instead of the summary.")
@click.option("-c", "--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Build the [[model]] entries of a TOML file (options as keys; flags given here override "
              "the file). MODEL then selects one entry by name or spec.")
@click.option("--executor", metavar="EXECUTOR",
              help="Where -c FILE's models are built: in-process (default, one after the other), ray (a local "
              "Ray started for the run), ray:auto or ray://HOST:PORT (an existing Ray cluster; needs "
              "optpipe[ray]).")
@click.option("--no-cache", is_flag=True, help="Do not reuse or store pass outputs in the build cache.")
@click.option("--rebench", is_flag=True,
              help="Measure validation and latency again, even when the cache holds a measurement of the same "
              "artifact, golden data, runtime versions and host.")
@click.option("--require-judged/--allow-unjudged", "require_judged", default=True, show_default=True,
              help="A gate that cannot judge (fewer than 20 rows where the model decides, a regression output "
              "that does not vary) makes the result UNJUDGED, exit 4 (default), never a pass; "
              "--allow-unjudged accepts such a variant (exit 0), listing the unjudged gates.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Build cache directory (default: $OPTPIPE_CACHE_DIR or ~/.cache/optpipe).")
@click.option("--junit", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE", callback=_writable_file,
              help="Also write JUnit XML: one test case per parity gate (per variant and output).")
@click.option("--opset", type=WholeIntRange(min=7), metavar="N",
              help="ONNX opset to export (default: the exporter's). report.json records the opset written; an "
              "exporter that cannot convert to N keeps its own, and that is a warning.")
@click.option("--profile", is_flag=True, default=None,
              help="Also profile each engine per op type and node on the golden inputs (ONNX Runtime's profiler; "
              "TensorRT's per-layer profiler on a GPU machine): in report.json, the console and report.html.")
@click.option("--mlflow", "mlflow_uri", is_flag=False, flag_value="", default=None, metavar="[TRACKING_URI]",
              help="Log the build to an MLflow run (parameters, metrics per variant, report files, the selected "
              "artifact): at TRACKING_URI, or MLflow's default ($MLFLOW_TRACKING_URI) when none is given. Nested "
              "in an active run. Needs pip install 'optpipe[mlflow]'.")
@trt_build_options
@precision_build_options
@measure_options
@sweep_budget_options
@reports_errors
@junit_on_error
def build(model: str, out_dir: Path, weights: Path | None, inputs: tuple[str, ...], dynamics: tuple[str, ...],
          static_batch: bool, static_seq: bool, sweep: bool, sweep_seconds: float | None,
          latency_budget: float | None, rebench: bool, require_judged: bool, target: str, precision: tuple[str, ...],
          output_names: str | None, tolerances: tuple[tuple[str, str, float], ...], threads: int | None,
          benchmark_batch: int | None,
          no_benchmark: bool, exporter: str, fuse: str, overwrite: bool, no_strict_weights: bool, trust_pickle: bool,
          as_json: bool, config_file: Path | None, executor: str | None, no_cache: bool, cache_dir: Path | None,
          junit: Path | None,
          trt_options: TensorRTOptions, precision_opts: dict[str, Any], mlflow_uri: str | None = None,
          profile: bool | None = None, opset: int | None = None,
          pass_options: dict[str, dict[str, Any]] | None = None) -> None:  # set by a config file's passes tables
    """Compile MODEL (path/to/file.py:NAME, package.module:NAME or a .pt2 program), or the models of -c FILE."""
    from optpipe.core.value_checks import check_environment

    check_environment()  # OPTPIPE_* variables: before any work, named in the error
    if config_file is not None:
        from optpipe.matrix.config_file import run_build_file

        sys.exit(run_build_file(click.get_current_context(), config_file, model, run_model))
    if executor is not None:
        raise click.UsageError("--executor builds the models of a config file: give -c FILE")
    if model is None:
        raise click.UsageError("Missing argument 'MODEL' (or give a config file with -c FILE).")
    if out_dir is None:
        raise click.UsageError("Missing option '--out'.")
    if trt_options and target != "tensorrt":
        raise click.UsageError("the [tensorrt] options (--opt-level, --timing-cache, ...) need "
                               "--target tensorrt")
    from optpipe.builder.precheck import precheck_build

    precheck_build(model, out_dir=out_dir, overwrite=overwrite, weights=weights, dynamics=dynamics, inputs=inputs)
    _check_output_files(model, out_dir, weights, junit, precision_opts, cache_dir, mlflow_uri)
    if mlflow_uri is not None:  # a missing optpipe[mlflow] fails now, not after the build
        from optpipe.report.mlflow_log import check_tracking_uri, import_mlflow

        import_mlflow()
        check_tracking_uri(mlflow_uri)  # an unreachable server or an SQLite path at a directory: now, in one line
    from optpipe.builder.options import parse_build_options
    from optpipe.core.console import info
    from optpipe.model.prepared import prepare_model

    if opset is not None:  # the export pass's own option, as a config file's [passes.export] would set it
        pass_options = {**(pass_options or {}), "export": {**(pass_options or {}).get("export", {}), "opset": opset}}
    # Every option is checked here, before the model file is even loaded.
    options = parse_build_options(
        target=target, precisions=precision, exporter=exporter, threads=threads, overwrite=overwrite,
        model_name=model, tolerances=tolerances, benchmark=not no_benchmark, benchmark_batch=benchmark_batch,
        trt=trt_options, pass_options=pass_options, profile=bool(profile), static_batch=static_batch,
        static_seq=static_seq, sweep=sweep, sweep_seconds=sweep_seconds, latency_budget=latency_budget,
        rebench=rebench, require_judged=require_judged, fuse=fuse,
        **{k: v for k, v in precision_opts.items() if k != "eval_data"},
    )  # fmt: skip
    log: Callable[[str], None] = info  # progress to stderr through the optpipe logger (-q/-v, --log-file)
    prepared = prepare_model(model, weights=weights, inputs=inputs, dynamics=dynamics,
                             output_names=output_names, strict=not no_strict_weights, trust_pickle=trust_pickle)
    options = _with_model_file_data(options, precision_opts, prepared)
    from optpipe.builder.run import build_with_options
    from optpipe.cache.store import PassCache

    instruments = [] if no_cache else [PassCache(cache_dir, log=log)]
    report = build_with_options(prepared.module, prepared.example_inputs, options, out_dir=out_dir,
                                input_names=prepared.input_names, output_names=prepared.output_names,
                                dynamic=prepared.dynamic, heldout_inputs=prepared.heldout_inputs, log=log,
                                instruments=instruments, provenance=_provenance(model, weights, prepared),
                                warnings=prepared.warnings, declared_shapes=bool(inputs))
    if not no_cache:
        from optpipe.cache.admin import enforce_cap

        enforce_cap(instruments[0].root, log)  # $OPTPIPE_CACHE_MAX_SIZE, least recently used first
    _publish_result(report, out_dir, as_json, mlflow_uri, junit)
    sys.exit(report.exit_code)


def _check_output_files(model: str, out_dir: Path, weights: Path | None, junit: Path | None,
                        precision_opts: dict[str, Any], cache_dir: Path | None, mlflow_uri: str | None) -> None:
    """--junit, --calib-cache, the group's --log-file, MLflow's local store: no input, not in --out or the cache."""
    from optpipe.builder.precheck import check_outputs

    context = click.get_current_context()
    calib = precision_opts.get("calib_data")
    outputs = {"--junit": junit, "--calib-cache": precision_opts.get("calib_cache"),
               "--log-file": context.find_root().params.get("log_file")}
    check_outputs(model, out_dirs=[out_dir], outputs=outputs, cache_dir=cache_dir, mlflow_uri=mlflow_uri,
                  inputs=[weights, precision_opts.get("eval_data"), calib if calib and Path(calib).exists() else None,
                          context.meta.get(CONFIG_META)])


def _publish_result(report: Any, out_dir: Path, as_json: bool, mlflow_uri: str | None, junit: Path | None) -> None:
    """After a build: the summary or JSON on stdout, then the MLflow run and the JUnit file when asked for."""
    from optpipe.core.console import echo_result, info

    sink = click.get_current_context().meta.get(JSON_SINK)
    if as_json and sink is not None:  # -c FILE --json: one document for every model, printed by config_file
        sink.append(report.to_dict())
    elif as_json:
        click.echo(report.to_json())
    else:
        echo_result(report.summary())
        _echo_profiles(report.variants)
        if report.sweep:
            from optpipe.builder.sweep import console_lines

            for line in console_lines(report.sweep):
                click.echo(line)
        click.echo(f"report: {out_dir / 'report.json'} (and report.html)")
    if mlflow_uri is not None:
        from optpipe.report.mlflow_log import MlflowTarget, log_report

        run_id = log_report(report.to_dict(), out_dir, MlflowTarget(tracking_uri=mlflow_uri or None))
        info(f"mlflow: logged run {run_id}")
    if junit is not None:
        from optpipe.report.junit import report_suite, write_junit

        try:
            write_junit(junit, [report_suite(report.to_dict())])
        except OSError as error:  # printed, not raised: junit_on_error would try the same write again
            click.echo(f"optpipe: error: cannot write --junit {junit}: {error.strerror or error}", err=True)
            sys.exit(EXIT_USAGE)


@main.group(name="cache")
def cache_group() -> None:
    """Inspect and prune the pass-output cache ($OPTPIPE_CACHE_DIR or ~/.cache/optpipe)."""


@cache_group.command(name="info")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Cache directory (default: $OPTPIPE_CACHE_DIR or ~/.cache/optpipe).")
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON.")
@reports_errors
def cache_info_command(cache_dir: Path | None, as_json: bool) -> None:
    """Entries, total size, least and most recently used entry, per pass."""
    import json

    from optpipe.cache.admin import cache_info

    info = cache_info(cache_dir)
    if as_json:
        click.echo(json.dumps({"directory": str(info.directory), "size": info.size, "entries": [
            {"key": e.key, "pass": e.pass_name, "size": e.size, "created": e.created, "last_used": e.last_used}
            for e in info.entries]}, indent=2))
    else:
        click.echo(info.summary())


def _size_option(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    from optpipe.core.value_checks import parse_size

    try:
        return parse_size(value) if value is not None else None
    except OptpipeError as error:
        raise click.BadParameter(str(error), ctx=ctx, param=param) from None


@cache_group.command(name="prune")
@click.option("--max-size", metavar="SIZE", callback=_size_option,
              help="Remove least recently used entries until the cache is at most SIZE (e.g. 5GB, 500MB).")
@click.option("--older-than", type=FiniteFloatRange(min=0), metavar="DAYS",
              help="Remove entries not used for DAYS days.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Cache directory (default: $OPTPIPE_CACHE_DIR or ~/.cache/optpipe).")
@reports_errors
def cache_prune_command(max_size: int | None, older_than: float | None, cache_dir: Path | None) -> None:
    """Remove cache entries; entries a running build is using are never removed.

    Without options, applies the per-build cap ($OPTPIPE_CACHE_MAX_SIZE, default 10GB).
    """
    from optpipe.cache.admin import default_max_size, prune

    if max_size is None and older_than is None:
        max_size = default_max_size()
    click.echo(prune(cache_dir, max_size=max_size, older_than_days=older_than).summary())


def _provenance(spec: str, weights: Path | None, prepared: Any) -> Any:
    """The command line and the model's files, for report.json's provenance."""
    from optpipe.report.provenance import ProvenanceInputs, cli_invocation

    source = getattr(prepared.source_module, "__file__", None)
    if source is None and spec.endswith(".pt2"):
        source = spec  # a torch.export program: the file is the model
    return ProvenanceInputs(cli_invocation(), str(weights) if weights else None, source)


def _echo_profiles(variants: list[VariantResult]) -> None:
    """The per-op profile of each variant that has one (``--profile``)."""
    from optpipe.runtime.op_profile import OpProfile

    for variant in variants:
        if variant.profile:
            click.echo(f"  {variant.precision}:")
            click.echo(OpProfile.from_dict(variant.profile).format())


@main.command(name="profile")
@click.argument("build_dir", type=click.Path(path_type=Path))
@click.option("--variant", "precision", metavar="PRECISION",
              help="Variant to profile (default: the selected one, else the first built).")
@click.option("--runs", type=WholeIntRange(min=1), default=20, show_default=True,
              help="Profiled runs over the golden inputs (after one warm-up run).")
@click.option("--threads", type=WholeIntRange(min=1), help="Threads for ONNX Runtime.")
@click.option("--json", "as_json", is_flag=True, help="Print the profile as JSON.")
@reports_errors
def profile_command(build_dir: Path, precision: str | None, runs: int, threads: int | None, as_json: bool) -> None:
    """Where BUILD_DIR's engine spends its time: per op type and the slowest nodes, with PyTorch module paths.

    Runs the variant's artifact with ONNX Runtime's profiler (TensorRT's per-layer profiler for a
    TensorRT build, on a GPU machine) on the build's golden inputs. The directory is not modified.
    Exit 0, or 2 for a directory that is not a build, does not match its manifest (as verify checks
    it: no missing or changed file, no symlink), or lacks the variant.
    """
    import json

    from optpipe.builder.profile_variant import profile_build_dir
    from optpipe.builder.verify import verify_build

    try:  # the line verify holds: manifest-checked files, no links
        intact = verify_build(build_dir, parity=False)
    except UserInputError as error:
        raise UserInputError(f"cannot profile {build_dir}: not a build directory ({error})") from None
    if intact.failures:
        raise UserInputError(f"{build_dir} does not match its manifest ({intact.failures[0]}); nothing was "
                             f"profiled (see 'optpipe verify {build_dir}')")
    result = profile_build_dir(build_dir, precision, runs=runs, threads=threads)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(f"{build_dir}: {result.precision} ({result.artifact})")
        click.echo(result.profile.format())


def run_model(task: ModelTask, *, capture: bool = False) -> ModelResult:
    """Build one model of a matrix with this ``build`` command (the runner of every executor, Ray included)."""
    from optpipe.matrix.tasks import invoke_model

    return invoke_model(build, task, capture=capture)


def build_many(configs: str | Path | Sequence[str | Path], executor: str | Executor | None = None, *,
               select: str | None = None, progress: ProgressCallback | None = None) -> MatrixResult:
    """Build every ``[[model]]`` of one or more config files (``optpipe build -c``) with ``executor``.

    ``executor``: ``None``/``"in-process"``, ``"ray"``, ``"ray:auto"``, ``"ray://HOST:PORT"`` or an
    executor object (e.g. ``RayExecutor(num_cpus=2)``). ``select`` keeps one model by name. A model whose
    build fails is a result with its exit code, not an exception; a config error raises
    :class:`~optpipe.matrix.config_file.ConfigError` before anything is built. ``MatrixResult.to_json()`` and
    :func:`optpipe.matrix.tasks.write_matrix_junit` give the command line's ``--json`` and ``--junit`` outputs.
    """
    from optpipe.matrix.config_file import tasks_from_file
    from optpipe.matrix.executors import get_executor, run_matrix

    paths = [configs] if isinstance(configs, str | Path) else list(configs)
    tasks: list[ModelTask] = []
    for path in paths:
        tasks.extend(tasks_from_file(Path(path), build, select))
    if not tasks:
        raise UserInputError("build_many: no config file given")
    return run_matrix(tasks, get_executor(executor), run_model, progress)


@main.command()
@click.argument("build_dir", type=click.Path(path_type=Path))
@click.option("--no-parity", is_flag=True, help="Only re-hash the files; do not rerun the engines.")
@click.option("--threads", type=WholeIntRange(min=1), help="Threads for ONNX Runtime.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@reports_errors
def verify(build_dir: Path, no_parity: bool, threads: int | None, as_json: bool) -> None:
    """Check BUILD_DIR against its manifest.json and rerun its parity gates.

    Exit 0 ok, 1 failed, 2 not a build, 3 files intact but the parity of TensorRT variants
    could not be checked here (needs TensorRT and an NVIDIA GPU; a split build's pending
    variants too). --no-parity checks the files only and exits 0 when they are intact.
    """
    import json

    from optpipe.builder.verify import verify_build

    result = verify_build(build_dir, parity=not no_parity, threads=threads)
    from optpipe.core.console import echo_result

    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        echo_result(result.summary())
    sys.exit(result.exit_code)


@main.command()
@click.argument("onnx_file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@reports_errors
def inspect(onnx_file: Path, as_json: bool) -> None:
    """Show an ONNX file's inputs, outputs, opsets, op histogram, domains and size."""
    import json

    from optpipe.onnx.inspect import format_inspection, inspect_onnx

    info = inspect_onnx(onnx_file)
    click.echo(json.dumps(info, indent=2, default=str) if as_json else format_inspection(info))


@main.command(name="passes")
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("-v", "--verbose", is_flag=True, help="Also list each pass's options (Config fields) with types "
              "and defaults.")
@reports_errors
def list_passes(names: tuple[str, ...], verbose: bool) -> None:
    """List the passes a build can run, one line each; with NAME or --verbose, their options.

    The options go in a config file's [passes.NAME] table or build(pass_options={NAME: {...}}).
    """
    from optpipe.infra.registry import PASSES

    if names or verbose:
        from optpipe.cli.pass_help import describe_pass

        click.echo("\n\n".join(describe_pass(name) for name in (names or tuple(PASSES))))
        return
    width = max(len(name) for name in PASSES)
    for name, (module, cls) in PASSES.items():
        pass_cls = getattr(__import__(f"optpipe.passes.{module}", fromlist=[cls]), cls)
        kinds = f"{pass_cls.input_kind.value}->{pass_cls.output_kind.value}"
        click.echo(f"{name:<{width}}  {kinds:<14}  {pass_cls.description}")


@main.command(name="sweep")
@click.argument("build_dir", type=click.Path(path_type=Path))
@click.option("--model", "model_spec", metavar="MODEL",
              help="The model the build compiled (as given to optpipe build), to time PyTorch eager at the same "
              "points. Without it only the artifact is timed.")
@click.option("--weights", type=click.Path(path_type=Path), help="State dict for --model: .pt/.pth or .safetensors.")
@click.option("--trust-pickle", is_flag=True, help="Allow a fully pickled --model file (runs code from it).")
@click.option("--variant", metavar="PRECISION", help="The variant to sweep (default: the selected one).")
@click.option("--json", "as_json", is_flag=True, help="Print the sweep section as JSON.")
@sweep_budget_options
@reports_errors
def sweep(build_dir: Path, model_spec: str | None, weights: Path | None, trust_pickle: bool, variant: str | None,
          as_json: bool, sweep_seconds: float | None, latency_budget: float | None) -> None:
    """Time BUILD_DIR's artifact at batch 1..max x threads 1..cores; add it to report.json and report.html.

    p50/p99 latency and throughput per point, PyTorch eager at the same points with --model, and the
    batch size with the highest throughput within --latency-budget.
    """
    from optpipe.builder.options import SweepOptions
    from optpipe.builder.sweep import console_lines, sweep_build_dir
    from optpipe.core.console import info

    options = SweepOptions(True, SweepOptions.seconds if sweep_seconds is None else sweep_seconds, latency_budget)
    torch_model = None
    if model_spec is not None:
        from optpipe.model.input_binding import bind_inputs
        from optpipe.model.prepared import prepare_model

        prepared = prepare_model(model_spec, weights=weights, trust_pickle=trust_pickle)
        prepared.module.eval()
        torch_model = bind_inputs(prepared.module, prepared.input_names) if prepared.input_names else prepared.module
    record = sweep_build_dir(build_dir, torch_model, options.seconds, options.latency_budget_ms, info, variant)
    if as_json:
        import json

        click.echo(json.dumps(record, indent=2))
    else:
        for line in console_lines(record):
            click.echo(line)
        click.echo(f"report: {build_dir / 'report.json'} (and report.html)")


@main.command(name="engine", epilog=EXIT_CODES_HELP)
@click.argument("build_dir", type=click.Path(path_type=Path))
@click.option("--batch", "benchmark_batch", type=WholeIntRange(min=1),
              help="Batch size to benchmark at (default: the example's).")
@click.option("--no-benchmark", is_flag=True, help="Skip latency measurement.")
@click.option("--rebuild", is_flag=True,
              help="Also rebuild engines that were already built (e.g. for another GPU).")
@click.option("--json", "as_json", is_flag=True, help="Print report.json on stdout instead of the summary.")
@trt_build_options
@reports_errors
# No --no-cache/--cache-dir here, unlike `optpipe build`: the engine-trt pass is not cacheable (a
# TensorRT engine depends on the GPU, the driver and timing measurements, and is not reproducible
# byte for byte), and validate/benchmark measure, so a cache would have nothing to reuse.
def engine(build_dir: Path, benchmark_batch: int | None, no_benchmark: bool, rebuild: bool, as_json: bool,
           trt_options: TensorRTOptions) -> None:
    """Finish a split TensorRT build: build, validate and time the engines in BUILD_DIR.

    Run on a machine with TensorRT and an NVIDIA GPU (pip install 'optpipe[tensorrt]'), on the
    directory 'optpipe build --target tensorrt' wrote elsewhere. The [tensorrt] options default to the
    ones given to 'optpipe build'. report.json is rewritten with status "complete".
    """
    from optpipe.builder.split_finish import finish_build
    from optpipe.core.console import echo_result, info

    log: Callable[[str], None] = info  # progress to stderr through the optpipe logger (-q/-v, --log-file)
    report = finish_build(build_dir, trt_options=trt_options, benchmark=not no_benchmark,
                          benchmark_batch=benchmark_batch, rebuild=rebuild, log=log)
    if as_json:
        click.echo(report.to_json())
    else:
        echo_result(report.summary())
    if not as_json:
        click.echo(f"report: {build_dir / 'report.json'}")
    sys.exit(report.exit_code)


def _lint_profiles(model: Any, dynamics: tuple[str, ...]) -> dict[str, Any] | None:
    """``optpipe lint --dynamic`` values as profiles of ``model`` (an ``onnx.ModelProto``), checked against its inputs.

    Like the build's ``lint_profiles``: per axis name (``batch`` also covers an unnamed axis 0; a bare
    name covers the axes the model names so) and per input (full min/opt/max shapes, where every
    dynamic axis of the input has bounds), so ``NAME=...@INPUT.AXIS`` covers that axis whatever the
    exporter called it. An unknown input, an axis out of range or static, or a bare name the model
    never uses is a UserInputError listing what the model has.
    """
    from optpipe.core.errors import UserInputError
    from optpipe.core.tensor_spec import TensorSpec
    from optpipe.model.input_parsing import BATCH, parse_dynamic
    from optpipe.runtime.tensorrt.shape_profiles import resolve_input_shapes

    if not dynamics:
        return None
    initializers = {i.name for i in model.graph.initializer}
    shapes: dict[str, list[int | str]] = {}
    for vi in model.graph.input:
        if vi.name in initializers or not vi.type.tensor_type.HasField("shape"):
            continue  # no shape: the lint reports it (dynamic-rank)
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else d.dim_param
                           for d in vi.type.tensor_type.shape.dim]
    named = sorted({d for dims in shapes.values() for d in dims if isinstance(d, str) and d})
    explicit: dict[tuple[str, int], str] = {}
    dims = []
    for text in dynamics:
        arg = parse_dynamic(text, bare_names=True)
        dims.append(arg.dim)
        name = arg.dim.axis_name
        if arg.axes is None:
            if name != BATCH and name not in named:
                raise UserInputError(
                    f"--dynamic '{text}': the model has no axis named '{name}' (its named dynamic axes: "
                    f"{', '.join(named) or 'none'}); for an unnamed axis give it, e.g. "
                    f"{arg.describe()}@INPUT.AXIS")
            continue
        for input_name, axis in arg.axes:
            if input_name not in shapes:
                raise UserInputError(f"--dynamic '{text}': the model has no input '{input_name}'; its inputs "
                                     f"are: {', '.join(shapes) or 'none'}")
            rank = len(shapes[input_name])
            dynamic_axes = [str(i) for i, d in enumerate(shapes[input_name]) if isinstance(d, str)]
            if axis >= rank or not isinstance(shapes[input_name][axis], str):
                what = (f"input '{input_name}' has rank {rank}" if axis >= rank
                        else f"axis {axis} of input '{input_name}' is static ({shapes[input_name][axis]})")
                raise UserInputError(f"--dynamic '{text}': {what}; its dynamic axes are: "
                                     f"{', '.join(dynamic_axes) or 'none'}")
            explicit[(input_name, axis)] = name
    profiles: dict[str, Any] = {dim.axis_name: dim for dim in dims}
    for input_name, input_dims in shapes.items():
        spec = TensorSpec(input_name, tuple(explicit.get((input_name, i), d) for i, d in enumerate(input_dims)),
                          "float32")
        try:
            profiles.update(resolve_input_shapes([spec], dims))
        except UserInputError:
            continue  # an axis without bounds: the lint reports it by name, with its fix
    return profiles


LINT_EXIT_HELP = f"""
\b
Exit codes:
  {EXIT_OK}  no errors (warnings may be printed)
  {EXIT_GATE_FAILED}  errors: TensorRT is expected to reject the model
  {EXIT_USAGE}  the file is missing or not readable ONNX, or a bad option
"""


@main.command(name="lint", epilog=LINT_EXIT_HELP)
@click.argument("onnx_file", type=click.Path(path_type=Path))
@click.option("--target", default="tensorrt", show_default=True, type=click.Choice(["tensorrt"]),
              help="Runtime whose ONNX support to check against.")
@click.option("--dynamic", "dynamics", multiple=True, metavar="NAME=MIN:OPT:MAX[@INPUT.AXIS,...]",
              help="Optimization profile of a dynamic axis, by its ONNX name (batch=1:8:32 also covers an "
              "unnamed axis 0) or by input and axis (seq=1:32:128@input_ids.1). Without one, every dynamic "
              "axis is reported.")
@click.option("--json", "as_json", is_flag=True, help="Print the problems as JSON.")
@reports_errors
def lint(onnx_file: Path, target: str, dynamics: tuple[str, ...], as_json: bool) -> None:
    """Check ONNX_FILE against TensorRT's documented ONNX support, without TensorRT or a GPU.

    Prints each problem with its node, what is wrong and how to fix it.
    """
    import json

    from optpipe.runtime.tensorrt.lint import _load as load_onnx
    from optpipe.runtime.tensorrt.lint import has_errors, lint_model

    model = load_onnx(onnx_file)
    problems = lint_model(model, profiles=_lint_profiles(model, dynamics))
    problems.sort(key=lambda p: p.severity != "error")
    if as_json:
        click.echo(json.dumps([p.to_dict() for p in problems], indent=2))
    else:
        for problem in problems:
            click.echo(f"{problem.severity}: {problem.code} at {problem.node or '(model)'}")
            click.echo(f"    {problem.message}")
            click.echo(f"    fix: {problem.fix}")
        errors = sum(p.severity == "error" for p in problems)
        click.echo(f"{onnx_file}: {errors} error(s), {len(problems) - errors} warning(s) for {target}")
    sys.exit(EXIT_GATE_FAILED if has_errors(problems) else EXIT_OK)
