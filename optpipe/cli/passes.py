"""``optpipe passes``: the passes a build can run, and their options."""

from __future__ import annotations

import click

from optpipe.cli.errors import reports_errors


@click.command(name="passes")
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("-v", "--verbose", is_flag=True, help="Also list each pass's options (Config fields) with types "
              "and defaults.")
@reports_errors
def list_passes(names: tuple[str, ...], verbose: bool) -> None:
    """List the passes a build can run, one line each; with NAME or --verbose, their options.

    The options go in a config file's [passes.NAME] table or build(pass_options={NAME: {...}}).
    """
    from optpipe.infra.registry import PASSES, pass_class

    if names or verbose:
        from optpipe.cli.pass_help import describe_pass

        click.echo("\n\n".join(describe_pass(name) for name in (names or tuple(PASSES))))
        return
    width = max(len(name) for name in PASSES)
    for name in PASSES:
        pass_cls = pass_class(name)
        kinds = f"{pass_cls.input_kind.value}->{pass_cls.output_kind.value}"
        click.echo(f"{name:<{width}}  {kinds:<14}  {pass_cls.description}")
