"""``optpipe engine DIR``: finish a split TensorRT build on the GPU machine."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from optpipe.cli.errors import EXIT_CODES_HELP, reports_errors
from optpipe.cli.options import trt_build_options
from optpipe.core.value_checks import WholeIntRange

if TYPE_CHECKING:
    from optpipe.builder.options import TensorRTOptions


@click.command(name="engine", epilog=EXIT_CODES_HELP)
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
