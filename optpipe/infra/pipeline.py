"""A linear chain of passes with instruments around each one.

The chain is type-checked when it is built (each pass's output kind must be
the next pass's input kind), so a mis-assembled build fails in milliseconds,
not after a ten-minute export. Timing, progress and caching are instruments
(as in TVM), not passes, so they apply to every pass uniformly.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from optpipe.core.artifact import Artifact
from optpipe.core.errors import PassError, VariantSkipped
from optpipe.core.memory import RssSampler, mib, release_free_heap
from optpipe.core.records import PassStatus
from optpipe.infra.pass_base import BuildContext, Pass, PassResult


@dataclass
class PassRecord:
    """One line of the report's ``passes`` list."""

    name: str
    variant: str
    seconds: float
    status: PassStatus
    modified: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    # Highest resident set size of the process while the pass ran (MiB; None where /proc is missing): which
    # step costs what. Process-wide, so it includes what earlier passes and the model still hold.
    peak_rss_mb: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "variant": self.variant,
            "seconds": round(self.seconds, 4),
            "status": self.status,
            "modified": self.modified,
            "metrics": self.metrics,
            "warnings": self.warnings,
            "error": self.error,
            "peak_rss_mb": self.peak_rss_mb,
        }


#: How often a pass's resident set is sampled (s): 100 reads of /proc/self/statm a second cost nothing beside
#: a pass, and a transient peak that lasts under 10 ms moves no build out of its memory budget.
PASS_RSS_INTERVAL_S = 0.01


class Instrument(Protocol):
    """Hooks called around every pass (progress printing, caching, dumps)."""

    def before_pass(self, pass_: Pass, artifact: Artifact, ctx: BuildContext) -> PassResult | None:
        """Return a result to skip running the pass (a cache hit), else None."""

    def after_pass(self, pass_: Pass, artifact: Artifact, result: PassResult, ctx: BuildContext) -> None:
        """Called after a pass ran (not after a cache hit)."""


def _run_pass(pass_: Pass, artifact: Artifact, ctx: BuildContext, instruments: Sequence[Instrument]) -> PassResult:
    """Run ``pass_``; a skip (VariantSkipped) is first handed to the instruments as a result, then re-raised."""
    try:
        return pass_(artifact, ctx)
    except PassError as error:
        if isinstance(error.cause, VariantSkipped):
            skipped = PassResult(artifact, modified=False, metrics=dict(error.cause.metrics),
                                 skipped=error.cause.reason)  # fmt: skip
            for instrument in instruments:
                instrument.after_pass(pass_, artifact, skipped, ctx)
        raise


class Pipeline:
    """An ordered list of passes whose kinds were checked to chain."""

    def __init__(self, passes: Sequence[Pass], variant: str = "") -> None:
        if not passes:
            raise ValueError("a pipeline needs at least one pass")
        for before, after in itertools.pairwise(passes):
            if before.output_kind is not after.input_kind:
                raise TypeError(
                    f"pass '{before.name}' makes a {before.output_kind.value} artifact but "
                    f"'{after.name}' expects {after.input_kind.value}"
                )
        self.passes = list(passes)
        self.variant = variant

    def run(
        self,
        artifact: Artifact,
        ctx: BuildContext,
        records: list[PassRecord],
        instruments: Sequence[Instrument] = (),
    ) -> Artifact:
        """Run every pass in order, appending one record per pass to ``records``.

        On failure the failing pass is recorded (status "failed") and the
        :class:`PassError` is re-raised with the passes that already ran.
        """
        done: list[str] = []
        for pass_ in self.passes:
            start = time.perf_counter()
            sampler = RssSampler(PASS_RSS_INTERVAL_S).start()
            try:
                cached = None
                for instrument in instruments:
                    cached = instrument.before_pass(pass_, artifact, ctx)
                    if cached is not None:
                        break
                if cached is not None and cached.skipped is not None:  # a cached skip: skip again
                    raise PassError(pass_.name, VariantSkipped(cached.skipped, {**cached.metrics, "cached": True}))
                result = cached if cached is not None else _run_pass(pass_, artifact, ctx, instruments)
                if cached is None:
                    for instrument in instruments:
                        instrument.after_pass(pass_, artifact, result, ctx)
            except PassError as error:
                records.append(
                    PassRecord(pass_.name, self.variant, time.perf_counter() - start, PassStatus.FAILED,
                               error=str(error), peak_rss_mb=mib(sampler.stop()))
                )
                if done:
                    error.args = (f"{error.args[0]} (after: {', '.join(done)})",)
                raise
            except BaseException:  # an interrupt: no record, and no sampling thread left behind
                sampler.stop()
                raise
            records.append(
                PassRecord(
                    pass_.name,
                    self.variant,
                    time.perf_counter() - start,
                    PassStatus.CACHED if cached is not None else PassStatus.OK,
                    modified=result.modified,
                    metrics=result.metrics,
                    warnings=list(result.warnings),
                    peak_rss_mb=mib(sampler.stop()),
                )
            )
            done.append(pass_.name)
            artifact = result.artifact
            release_free_heap()  # what the pass freed goes back to the OS: the build's peak RSS stays low
        return artifact
