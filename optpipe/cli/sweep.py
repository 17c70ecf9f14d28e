"""``optpipe sweep DIR``: latency and throughput of a build's artifact over batch x threads."""

from __future__ import annotations

from pathlib import Path

import click

from optpipe.cli.errors import reports_errors
from optpipe.cli.options import sweep_budget_options


@click.command(name="sweep")
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
