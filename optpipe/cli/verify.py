"""``optpipe verify DIR``: is a build directory still what the build made, and does it still pass?"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from optpipe.cli.errors import reports_errors
from optpipe.core.value_checks import WholeIntRange


@click.command()
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
