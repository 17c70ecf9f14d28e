"""``optpipe profile DIR``: where a finished build's engine spends its time."""

from __future__ import annotations

from pathlib import Path

import click

from optpipe.cli.errors import reports_errors
from optpipe.core.errors import (
    UserInputError,
)
from optpipe.core.value_checks import WholeIntRange


@click.command(name="profile")
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
