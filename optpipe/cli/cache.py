"""``optpipe cache info|prune``: what the pass cache holds, and pruning it."""

from __future__ import annotations

from pathlib import Path

import click

from optpipe.cli.errors import reports_errors
from optpipe.core.errors import (
    OptpipeError,
)
from optpipe.core.value_checks import FiniteFloatRange


@click.group(name="cache")
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
