"""``optpipe build``: compile a model (or every model of a config file) into a verified artifact."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from optpipe.cli.build_flags import BuildFlags, bundled_flags
from optpipe.cli.errors import EXIT_CODES_HELP, reports_errors
from optpipe.cli.help import BuildCommand
from optpipe.cli.options import (
    PrecisionsType,
    ToleranceType,
    measure_options,
    precision_build_options,
    sweep_budget_options,
    trt_build_options,
    writable_file,
)
from optpipe.core.errors import (
    EXIT_USAGE,
)
from optpipe.core.value_checks import WholeIntRange
from optpipe.matrix.config_file import CONFIG_META, JSON_SINK
from optpipe.passes.export_onnx import EXPORTER_CHOICES
from optpipe.report.junit import junit_on_error
from optpipe.runtime.target import TARGET_CLASSES

if TYPE_CHECKING:
    from optpipe.builder.options import BuildOptions
    from optpipe.core.records import VariantResult
    from optpipe.matrix.tasks import ModelResult, ModelTask


def _with_model_file_data(options: BuildOptions, flags: BuildFlags, prepared: Any) -> BuildOptions:
    """The options with the model file's calibration and eval data where the flags gave none."""
    from dataclasses import replace

    from optpipe.builder.options import CalibrationSource, EvalOptions
    from optpipe.compare.task_accuracy import load_eval_npz

    calibration, evaluation = options.calibration, options.eval
    if not flags.calib_data and prepared.calibration:
        calibration = CalibrationSource.parse(prepared.calibration, calibration.synthetic, calibration.method,
                                              calibration.cache)
    if getattr(prepared, "input_ranges", None):  # --input LOW..HIGH: synthetic calibration draws integers there
        calibration = replace(calibration, input_ranges=CalibrationSource.parse(
            input_ranges=prepared.input_ranges).input_ranges)
    if flags.eval_data is not None:
        evaluation = EvalOptions(load_eval_npz(flags.eval_data, prepared.input_names), str(flags.eval_data),
                                 evaluation.max_accuracy_drop)
    elif prepared.eval_set is not None:
        evaluation = EvalOptions(prepared.eval_set, "from eval_data() in the model file", evaluation.max_accuracy_drop)
    return replace(options, calibration=calibration, eval=evaluation)


@click.command(cls=BuildCommand, epilog=EXIT_CODES_HELP)
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
@click.option("--target", default="cpu", show_default=True, type=click.Choice(tuple(TARGET_CLASSES)))
@click.option("--precision", "precision", type=PrecisionsType(), default="fp32", show_default=True,
              help="Comma-separated precisions to build: fp32, fp16, int8, int8-dynamic, int4-weight (cpu target: no "
              "calibration data); or 'auto': build the target's "
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
@click.option("--exporter", default="auto", show_default=True, type=click.Choice(EXPORTER_CHOICES))
@click.option("--fuse", default="auto", show_default=True, metavar="auto|off|MODEL_TYPE",
              help="[cpu] Transformer fusions (ONNX Runtime's transformer optimizer) for --precision auto's fused "
              "variants (fp32+fused, int8-dynamic+fused): 'auto' detects a BERT-like graph, 'off' builds none, or "
              "the optimizer's model type (bert, gpt2, vit, ...).")
@click.option("--external-data-above", default=None, metavar="SIZE",
              help="Keep every model file's weights in an external <file>.data beside it above SIZE (default "
              "1.8GB: protobuf refuses a model over 2 GiB; 0 = always).")
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
@click.option("--junit", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE", callback=writable_file,
              help="Also write JUnit XML: one test case per parity gate (per variant and output).")
@click.option("--opset", type=WholeIntRange(min=7), metavar="N",
              help="ONNX opset to export (default: the exporter's). report.json records the opset written; an "
              "exporter that cannot convert to N keeps its own, and that is a warning.")
@click.option("--max-rss", "max_rss", metavar="SIZE",
              help="The most memory the build may use (e.g. 6GB): estimated from the model's weights before any "
              "work (3 x FP32 weights + 1.5 GB), refused at once (exit 2) when it cannot fit, calibration "
              "chunked when only that makes it fit. Default: the memory this machine has available.")
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
@bundled_flags
def build(flags: BuildFlags) -> None:
    """Compile MODEL (path/to/file.py:NAME, package.module:NAME or a .pt2 program), or the models of -c FILE."""
    from optpipe.core.value_checks import check_environment

    check_environment()  # OPTPIPE_* variables: before any work, named in the error
    if flags.config_file is not None:
        from optpipe.matrix.config_file import run_build_file

        sys.exit(run_build_file(click.get_current_context(), flags.config_file, flags.model, run_model))
    if flags.executor is not None:
        raise click.UsageError("--executor builds the models of a config file: give -c FILE")
    if flags.model is None:
        raise click.UsageError("Missing argument 'MODEL' (or give a config file with -c FILE).")
    if flags.out_dir is None:
        raise click.UsageError("Missing option '--out'.")
    model, out_dir = flags.model, flags.out_dir
    if flags.trt_options and flags.target != "tensorrt":
        raise click.UsageError("the [tensorrt] options (--opt-level, --timing-cache, ...) need "
                               "--target tensorrt")
    from optpipe.builder.precheck import precheck_build

    precheck_build(model, out_dir=out_dir, overwrite=flags.overwrite, weights=flags.weights, dynamics=flags.dynamics,
                   inputs=flags.inputs)
    _check_output_files(flags, model, out_dir)
    if flags.mlflow_uri is not None:  # a missing optpipe[mlflow] fails now, not after the build
        from optpipe.report.mlflow_log import check_tracking_uri, import_mlflow

        import_mlflow()
        check_tracking_uri(flags.mlflow_uri)  # an unreachable server or an SQLite path at a directory: now
    from optpipe.builder.options import parse_build_options
    from optpipe.core.console import info
    from optpipe.model.prepared import prepare_model

    options = parse_build_options(**flags.parser_arguments())  # every option checked, before the model loads
    log: Callable[[str], None] = info  # progress to stderr through the optpipe logger (-q/-v, --log-file)
    prepared = prepare_model(model, weights=flags.weights, inputs=flags.inputs, dynamics=flags.dynamics,
                             output_names=flags.output_names, strict=not flags.no_strict_weights,
                             trust_pickle=flags.trust_pickle)
    options = _with_model_file_data(options, flags, prepared)
    from optpipe.builder.run import build_with_options
    from optpipe.cache.store import PassCache

    instruments = [] if flags.no_cache else [PassCache(flags.cache_dir, log=log)]
    report = build_with_options(prepared.module, prepared.example_inputs, options, out_dir=out_dir,
                                input_names=prepared.input_names, output_names=prepared.output_names,
                                dynamic=prepared.dynamic, heldout_inputs=prepared.heldout_inputs, log=log,
                                instruments=instruments, provenance=_provenance(model, flags.weights, prepared),
                                warnings=prepared.warnings, declared_shapes=bool(flags.inputs))
    if not flags.no_cache:
        from optpipe.cache.admin import enforce_cap

        enforce_cap(instruments[0].root, log)  # $OPTPIPE_CACHE_MAX_SIZE, least recently used first
    _publish_result(report, out_dir, flags.as_json, flags.mlflow_uri, flags.junit)
    sys.exit(report.exit_code)


def _check_output_files(flags: BuildFlags, model: str, out_dir: Path) -> None:
    """--junit, --calib-cache, the group's --log-file, MLflow's local store: no input, not in --out or the cache."""
    from optpipe.builder.precheck import check_outputs

    context = click.get_current_context()
    calib = flags.calib_data
    outputs = {"--junit": flags.junit, "--calib-cache": flags.calib_cache,
               "--log-file": context.find_root().params.get("log_file")}
    check_outputs(model, out_dirs=[out_dir], outputs=outputs, cache_dir=flags.cache_dir, mlflow_uri=flags.mlflow_uri,
                  inputs=[flags.weights, flags.eval_data, calib if calib and Path(calib).exists() else None,
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


def run_model(task: ModelTask, *, capture: bool = False) -> ModelResult:
    """Build one model of a matrix with this ``build`` command (the runner of every executor, Ray included)."""
    from optpipe.matrix.tasks import invoke_model

    return invoke_model(build, task, capture=capture)
