"""The click options and parameter types that ``optpipe build`` shares with other commands."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import click

from optpipe.cli.errors import F
from optpipe.core.errors import (
    UserInputError,
)
from optpipe.core.value_checks import FiniteFloatRange, WholeIntRange
from optpipe.precision.names import CALIB_METHODS
from optpipe.runtime.tensorrt.metadata import HARDWARE_LEVELS


class PrecisionsType(click.ParamType):
    """``--precision fp32,int8`` (or a config file's list): :func:`optpipe.builder.options.parse_precisions`."""

    name = "precisions"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, ...]:
        from optpipe.builder.options import parse_precisions

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

        try:
            return OutputKinds.parse([value]).items[0]
        except UserInputError as error:
            self.fail(str(error), param, ctx)


def writable_file(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """Refuse a file option that could not be written, before any work (e.g. ``--junit`` under a file)."""
    from optpipe.core.safe_output import output_refusal

    reason = output_refusal(value) if value is not None else None
    if reason:
        raise click.BadParameter(f"cannot write '{value}': {reason}", ctx=ctx, param=param)
    return value


#: ``--hardware-compat``: the engine pass's portable hardware levels (its default, "none", is the flag left off).
HARDWARE_COMPAT_LEVELS = tuple(level for level in HARDWARE_LEVELS if level != "none")


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
    """Add the calibration, accuracy-guard and eval options (fields of :class:`~optpipe.cli.build_flags.BuildFlags`)."""
    options = [
        click.option("--calib-data", metavar="SOURCE",
                     help="[int8] Calibration inputs: FILE.npz (input-name keys), a directory of .npy/.npz, or "
                     "FILE.py:NAME. Default: calibration_data() in the model file."),
        click.option("--synthetic-calib", is_flag=True,
                     help="[int8] Calibrate on random inputs when there is no data (flagged in the report)."),
        click.option("--calib-method", type=click.Choice(CALIB_METHODS), default="minmax",
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
        func = option(func)
    return func


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
    """Add output kinds, the guard's time budget and the benchmark's budget (fields of ``BuildFlags``)."""
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
                     help="Fewest timed calls per runtime, even past --bench-seconds (default 5)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func
