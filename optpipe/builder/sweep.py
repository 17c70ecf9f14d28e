"""The batch x threads sweep: latency and throughput of the shipped artifact where a server would run it.

Why: a build's benchmark times one shape (the example's batch); a server chooses a batch
size and a thread count, and the right choice depends on a latency budget (Model Navigator
and Triton's perf analyzer sweep the same grid). The grid: batch 1, 2, 4, ... up to the
dynamic batch's maximum (at most :data:`MAX_SWEEP_BATCH`; the static batch alone when it is
static) x intra-op threads 1, 2, 4, ... up to the cores. At each point the artifact and, when
the model is in memory, PyTorch eager are timed in one interleaved run (:mod:`optpipe.runtime.timing`),
each for a time budget (``seconds`` per runtime and point), so the sweep is bounded on a small
machine. Token inputs are cut to the build's ``seq`` opt length (the data's median real length):
the sweep measures what is served, not the padding.

The record is the report's ``sweep`` section (versioned: :data:`SWEEP_VERSION`); the recommended
point is the highest throughput whose p99 latency is within the budget.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from optpipe.compare.golden import GoldenData, resize_axes, resize_batch
from optpipe.core.artifact import Artifact, ArtifactKind
from optpipe.core.errors import UserInputError
from optpipe.core.tensor_spec import TensorSpec
from optpipe.report.build_report import Report
from optpipe.runtime.runners import Runner, TorchRunner
from optpipe.runtime.timing import budgeted_blocks

SWEEP_VERSION = 1
MAX_SWEEP_BATCH = 64
TORCH = "torch"


@dataclass(frozen=True)
class SweepPoint:
    """One runtime at one batch and thread count."""

    runtime: str  # the variant's precision, or "torch"
    batch: int
    threads: int
    p50_ms: float
    p99_ms: float
    throughput: float  # rows per second at the median latency
    calls: int


@dataclass(frozen=True)
class SweepRecord:
    """``report.json`` ``sweep``: the grid, every point, and the recommended one."""

    variant: str
    artifact: str
    batches: tuple[int, ...]
    threads: tuple[int, ...]
    seconds_per_point: float
    points: tuple[SweepPoint, ...]
    seq_length: int | None = None  # token inputs were cut to this length (None: the example's shapes)
    latency_budget_ms: float | None = None
    baseline_note: str | None = None  # why PyTorch eager is missing, when it is

    @property
    def best(self) -> SweepPoint | None:
        """The artifact's highest-throughput point whose p99 is within the budget (any, without one)."""
        return choose_best(self.points, self.variant, self.latency_budget_ms)

    def to_dict(self) -> dict[str, Any]:
        best = self.best
        torch_there = next((p for p in self.points if best and p.runtime == TORCH and (p.batch, p.threads) ==
                            (best.batch, best.threads)), None)
        return {
            "version": SWEEP_VERSION, "variant": self.variant, "artifact": self.artifact,
            "batches": list(self.batches), "threads": list(self.threads), "seconds_per_point": self.seconds_per_point,
            "seq_length": self.seq_length, "latency_budget_ms": self.latency_budget_ms,
            "points": [asdict(point) for point in self.points],
            "best": asdict(best) if best else None,
            "best_speedup_vs_torch": torch_there.p50_ms / best.p50_ms if best and torch_there else None,
            "baseline_note": self.baseline_note,
        }  # fmt: skip


def choose_best(points: Sequence[SweepPoint], runtime: str, budget_ms: float | None) -> SweepPoint | None:
    """The point of ``runtime`` with the highest throughput and p99 <= ``budget_ms`` (None when none fits)."""
    fitting = [p for p in points if p.runtime == runtime and (budget_ms is None or p.p99_ms <= budget_ms)]
    return max(fitting, key=lambda p: p.throughput, default=None)


def sweep_batches(dynamic: Sequence[Mapping[str, Any]], example_batch: int) -> tuple[int, ...]:
    """1, 2, 4, ... up to the dynamic batch's max (capped at :data:`MAX_SWEEP_BATCH`); the example's when static."""
    batch = next((d for d in dynamic if d.get("name") == "batch"), None)
    if batch is None:
        return (example_batch,)
    low, high = int(batch["min"]), min(int(batch["max"]), MAX_SWEEP_BATCH)
    sizes, size = [], 1
    while size <= high:
        if size >= low:
            sizes.append(size)
        size *= 2
    return tuple(sizes) or (low,)


def sweep_threads(cores: int | None = None) -> tuple[int, ...]:
    """1, 2, 4, ... and the core count itself."""
    cores = max(1, cores or os.cpu_count() or 1)
    counts, count = [], 1
    while count < cores:
        counts.append(count)
        count *= 2
    return (*counts, cores)


def sweep_feed(example: Mapping[str, np.ndarray], specs: Sequence[TensorSpec],
               dynamic: Sequence[Mapping[str, Any]]) -> tuple[dict[str, np.ndarray], int | None]:
    """The example's rows with token inputs cut to the ``seq`` opt length; and that length (None: unchanged)."""
    seq = next((d for d in dynamic if d.get("name") == "seq"), None)
    if seq is None:
        return dict(example), None
    axes = [(spec.name, axis) for spec in specs for axis, dim in enumerate(spec.shape) if dim == "seq"]
    return resize_axes(dict(example), axes, int(seq["opt"])), int(seq["opt"])


def measure_grid(engine: Callable[[int], Runner], torch_model: Any, feed: Mapping[str, np.ndarray],
                 grid: tuple[tuple[int, ...], tuple[int, ...]], variant: str, seconds: float,
                 log: Callable[[str], None]) -> list[SweepPoint]:
    """Every point of ``grid`` (batches, threads): the engine (``engine(threads)`` makes a runner) and PyTorch.

    One runner per thread count (ONNX Runtime fixes intra-op threads per session); PyTorch's
    thread count is set and restored. Each point is one interleaved, budgeted run of both.
    """
    import torch

    batches, thread_counts = grid
    points: list[SweepPoint] = []
    previous = torch.get_num_threads()
    try:
        for threads in thread_counts:
            runner = engine(threads)
            torch.set_num_threads(threads)
            for batch in batches:
                rows = resize_batch(dict(feed), batch)
                calls: dict[str, Callable[[], object]] = {variant: _call(runner, rows)}
                if torch_model is not None:
                    calls[TORCH] = _call(torch_model, rows)
                timed = budgeted_blocks(calls, seconds=seconds, warmup=2, min_calls=3, blocks=2,
                                        progress=lambda *_: None)
                points.extend(_point(name, batch, threads, blocks) for name, blocks in timed.items())
                log(f"[sweep] batch {batch}, {threads} thread(s): " + ", ".join(
                    f"{p.runtime} p50 {p.p50_ms:.2f} ms" for p in points[-len(timed):]))
            runner.close()
    finally:
        torch.set_num_threads(previous)
    return points


def _call(runner: Any, rows: dict[str, np.ndarray]) -> Callable[[], object]:
    return lambda: runner.infer(rows)


def _point(runtime: str, batch: int, threads: int, blocks: list[list[float]]) -> SweepPoint:
    times = np.asarray([t for block in blocks for t in block], dtype=np.float64)
    p50 = float(np.percentile(times, 50))
    return SweepPoint(runtime, batch, threads, p50, float(np.percentile(times, 99)),
                      batch / (p50 / 1e3) if p50 > 0 else 0.0, int(times.size))


def sweep_report(report: Report, directory: Path, torch_model: Any, seconds: float, budget_ms: float | None,
                 log: Callable[[str], None], variant: str | None = None) -> SweepRecord:
    """Sweep the selected (or named) variant of a build in ``directory``; ``torch_model``: PyTorch eager or None."""
    from optpipe.runtime.target import get_target

    chosen = _variant(report, variant)
    build = report.build.to_dict() if report.build is not None else {}
    golden = directory / "golden"
    example = GoldenData.load(golden).case("example") if golden.is_dir() else None
    if example is None or not chosen.artifact:
        raise UserInputError(f"{directory} has no golden example or no artifact for '{chosen.precision}': "
                             "not a finished build")
    specs = tuple(TensorSpec.from_dict(s) for s in build.get("inputs") or [])
    dynamic = build.get("dynamic") or []
    feed, seq_length = sweep_feed(example.inputs, specs, dynamic)
    path = (directory / chosen.artifact).resolve()
    if directory.resolve() not in path.parents or not path.is_file():
        raise UserInputError(f"the artifact '{chosen.artifact}' of {directory}/report.json is not a file of the build")
    artifact = Artifact(ArtifactKind.ENGINE, path, "", specs, (), chosen.precision)
    target = get_target(report.target)
    reference = None
    if torch_model is not None:
        reference = TorchRunner(torch_model, tuple(s.name for s in specs), tuple(build.get("outputs") or ()))
    grid = (sweep_batches(dynamic, example.batch), sweep_threads())
    log(f"optpipe: sweeping {chosen.precision}: batch {', '.join(map(str, grid[0]))} x threads "
        f"{', '.join(map(str, grid[1]))}, {seconds:g} s per runtime and point")
    points = measure_grid(lambda threads: target.runner(artifact, threads), reference, feed, grid, chosen.precision,
                          seconds, log)
    return SweepRecord(chosen.precision, chosen.artifact, grid[0], grid[1], seconds, tuple(points), seq_length,
                       budget_ms, None if reference else "PyTorch eager not timed: the model was not given (--model)")


def _variant(report: Report, name: str | None) -> Any:
    """The variant to sweep: ``name``, else the selected one, else the only passing one."""
    passing = [v for v in report.variants if v.passed and v.artifact]
    if name is not None:
        found = [v for v in report.variants if v.precision == name and v.artifact]
        if not found:
            known = ", ".join(v.precision for v in report.variants if v.artifact) or "none"
            raise UserInputError(f"no variant '{name}' with an artifact in this build (variants: {known})")
        return found[0]
    selected = (report.selected or {}).get("precision")
    for variant in passing:
        if variant.precision == selected:
            return variant
    if not passing:
        raise UserInputError("the build has no passing variant to sweep")
    return passing[0]


def console_lines(record: Mapping[str, Any]) -> list[str]:
    """What the console says after a sweep: the recommended batch within the budget, or that none fits."""
    budget = record.get("latency_budget_ms")
    within = f"within a p99 of {budget:g} ms" if budget is not None else "(no --latency-budget)"
    best = record.get("best")
    if not best:
        fastest = min((p for p in record["points"] if p["runtime"] == record["variant"]),
                      key=lambda p: p["p99_ms"], default=None)
        hint = f"; the lowest p99 is {fastest['p99_ms']:.2f} ms at batch {fastest['batch']}" if fastest else ""
        return [f"sweep: no batch size of {record['variant']} meets the latency budget {within}{hint}"]
    speedup = record.get("best_speedup_vs_torch")
    versus = f", {speedup:.2f}x PyTorch eager there" if speedup else ""
    return [f"sweep: best throughput {within}: batch {best['batch']}, {best['threads']} thread(s): "
            f"{best['throughput']:.1f} rows/s (p50 {best['p50_ms']:.2f} ms, p99 {best['p99_ms']:.2f} ms{versus})"]


def sweep_build_dir(directory: Path, torch_model: Any, seconds: float, budget_ms: float | None,
                    log: Callable[[str], None], variant: str | None = None) -> dict[str, Any]:
    """``optpipe sweep DIR``: sweep a finished build and add the section to its report.json and report.html.

    The build's files are checked against its manifest first: a directory changed since the build is
    refused (re-hashing it afterwards would bless the change). The manifest is then updated to the new
    report files, keeping what it recorded about the build.
    """
    from optpipe.builder.verify import verify_build
    from optpipe.report.build_report import ReportUnreadable, read_report
    from optpipe.report.manifest import refresh_after_edit

    checked = verify_build(directory, parity=False)
    if checked.failures:
        raise UserInputError(f"{directory} changed since it was built ({checked.failures[0]}); run optpipe verify")
    try:
        report = read_report(directory / "report.json")
    except ReportUnreadable as error:
        raise UserInputError(f"{directory / 'report.json'}: {error}") from None
    record = sweep_report(report, directory, torch_model, seconds, budget_ms, log, variant)
    report.sweep = record.to_dict()
    refresh_after_edit(directory, report)
    return report.sweep
