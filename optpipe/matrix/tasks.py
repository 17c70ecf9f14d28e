"""A build matrix: the models of one or more config files, built by an executor, summarised once.

Why a module of its own: ``optpipe build -c FILE`` builds several models, and
where they are built (this process, one after the other; or a Ray cluster,
see :mod:`optpipe.matrix.ray_executor`) must not change what a model's build does
or how the whole matrix is reported. So a model build is one function,
:func:`optpipe.cli.build.run_model` (over :func:`invoke_model`), that every executor calls with a picklable
:class:`ModelTask` and that returns a typed :class:`ModelResult`; the
summary (console table, one JSON document, one JUnit file, the worst exit
code) is made from those records here, whichever executor ran them.

:func:`invoke_model` runs the ``optpipe build`` command's own callback with the
model's resolved parameters, so a matrix build, a config-file build and a
command-line build cannot drift apart.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from optpipe.core.errors import EXIT_ENVIRONMENT, EXIT_GATE_FAILED, EXIT_OK, EXIT_UNJUDGED, EXIT_USAGE, one_line

# Worst-first order of exit codes when several models are built.
SEVERITY = (EXIT_USAGE, EXIT_GATE_FAILED, EXIT_UNJUDGED, EXIT_ENVIRONMENT, EXIT_OK)


def worst_exit_code(codes: Sequence[int]) -> int:
    """The exit code of several builds: usage error > gate failed > split build > ok."""
    if not codes:
        return EXIT_OK
    rank = {code: index for index, code in enumerate(SEVERITY)}
    return min(codes, key=lambda code: rank.get(code, -1))


@dataclass(frozen=True)
class ModelTask:
    """One model of the matrix, resolved to the ``build`` command's parameters (picklable: it travels to workers).

    ``params`` name files by path: on a cluster the model file, weights and
    output directory must be on a filesystem every node sees at the same path.
    """

    name: str
    where: str
    params: Mapping[str, Any]

    @property
    def out_dir(self) -> Path:
        return Path(self.params["out_dir"])

    @property
    def benchmark(self) -> bool:
        """Whether this build measures latency (and so needs a node to itself on a cluster)."""
        return not self.params.get("no_benchmark")


@dataclass(frozen=True)
class NodeInfo:
    """Where a build ran: the Ray node id (``None`` in-process), host name and process id."""

    node_id: str | None
    hostname: str
    pid: int

    @classmethod
    def here(cls) -> NodeInfo:
        node_id = None
        if "ray" in sys.modules:  # inside a Ray worker; never import ray just to ask
            with contextlib.suppress(Exception):
                import ray

                if ray.is_initialized():
                    node_id = ray.get_runtime_context().get_node_id()
        return cls(node_id, socket.gethostname(), os.getpid())

    def to_dict(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "hostname": self.hostname, "pid": self.pid}


@dataclass(frozen=True)
class VariantOutcome:
    """One variant of a model's build, as the matrix summary shows it."""

    precision: str
    status: str
    passed: bool | None
    latency_ms: float | None  # median, when benchmarked
    measured_on: NodeInfo | None  # the node the latency was measured on (None: not benchmarked)

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "status": self.status, "passed": self.passed,
                "latency_ms": self.latency_ms,
                "measured_on": self.measured_on.to_dict() if self.measured_on else None}


@dataclass(frozen=True)
class ModelResult:
    """What one model's build ended with (the report itself stays in ``out_dir/report.json``)."""

    name: str
    out_dir: Path
    exit_code: int
    seconds: float
    node: NodeInfo | None
    variants: tuple[VariantOutcome, ...] = ()
    error: str | None = None  # the one-line error of a build that ended without a report
    report: Mapping[str, Any] | None = field(default=None, compare=False)
    log: str = field(default="", compare=False)  # the build's output, when an executor captured it
    attempts: int = 1  # more than 1: a worker died and the executor retried the build

    @property
    def status(self) -> str:
        return "ok" if self.exit_code == EXIT_OK else "failed"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "out": str(self.out_dir), "exit_code": self.exit_code,
                "status": self.status, "seconds": round(self.seconds, 3),
                "node": self.node.to_dict() if self.node else None,
                "attempts": self.attempts, "variants": [v.to_dict() for v in self.variants], "error": self.error,
                "report": self.report}


@dataclass(frozen=True)
class MatrixResult:
    """Every model's result, in the file's order, and the executor that built them."""

    results: tuple[ModelResult, ...]
    executor: str
    seconds: float

    @property
    def exit_code(self) -> int:
        return worst_exit_code([r.exit_code for r in self.results])

    def to_dict(self) -> dict[str, Any]:
        return {"executor": self.executor, "exit_code": self.exit_code, "seconds": round(self.seconds, 3),
                "builds": [r.to_dict() for r in self.results]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    def table(self) -> str:
        """The console summary: one row per variant (one per model when it has none)."""
        rows = [("model", "variant", "status", "passed", "p50 ms", "node", "exit")]
        for result in self.results:
            node = result.node.hostname if result.node else "-"
            if result.node and result.node.node_id:
                node += f" ({result.node.node_id[:8]})"
            for variant in result.variants or (None,):
                if variant is None:
                    rows.append((result.name, "-", "error" if result.error else "-", "-", "-", node,
                                 str(result.exit_code)))
                    continue
                latency = f"{variant.latency_ms:.3f}" if variant.latency_ms is not None else "-"
                rows.append((result.name, variant.precision, variant.status, _yes_no(variant.passed), latency, node,
                             str(result.exit_code)))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                 for row in rows]
        lines.append(f"{len(self.results)} models, executor {self.executor}, {self.seconds:.1f}s, "
                     f"exit {self.exit_code}")
        return "\n".join(lines)


def _yes_no(value: bool | None) -> str:
    return "-" if value is None else "yes" if value else "NO"


@dataclass(frozen=True)
class MatrixCounts:
    """Progress of a matrix: how many builds are queued, running, done (ok) and failed."""

    queued: int
    running: int
    done: int
    failed: int

    def line(self) -> str:
        return (f"optpipe: matrix: {self.queued} queued, {self.running} running, {self.done} done, "
                f"{self.failed} failed")


#: Prints a progress line (stderr in the command line; a no-op in the Python API by default).
ProgressCallback = Callable[[MatrixCounts], None]


class ModelRunner(Protocol):
    """Builds one model: :func:`optpipe.cli.build.run_model` (module-level, so Ray can ship it by name)."""

    def __call__(self, task: ModelTask, *, capture: bool = False) -> ModelResult: ...


def variant_outcomes(report: Mapping[str, Any], node: NodeInfo | None) -> tuple[VariantOutcome, ...]:
    """The matrix view of a report's variants; a benchmarked variant records the node it was timed on."""
    outcomes = []
    for variant in report.get("variants") or []:
        latency = (variant.get("latency") or {}).get("p50_ms")
        outcomes.append(VariantOutcome(
            precision=str(variant.get("precision")),
            status=str(variant.get("status") or "-"),
            passed=bool(variant.get("passed")) if variant.get("parity") else None,
            latency_ms=float(latency) if latency is not None else None,
            measured_on=node if latency is not None else None,
        ))
    return tuple(outcomes)


@contextlib.contextmanager
def _captured(capture: bool, quiet_stdout: bool) -> Iterator[io.StringIO]:
    """Capture the build's output (``capture``: stdout and stderr; ``quiet_stdout``: stdout only)."""
    buffer = io.StringIO()
    if capture:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            yield buffer
    elif quiet_stdout:
        with contextlib.redirect_stdout(buffer):
            yield buffer
    else:
        yield buffer


def invoke_model(command: Any, task: ModelTask, *, capture: bool = False) -> ModelResult:
    """Build one model with the ``optpipe build`` command (``command``) and return its result.

    Never raises for a failed build: a usage error, a gate failure or an
    environment error of this model is its result (the other models still
    build). ``capture`` keeps the build's output in the result instead of
    printing it (a cluster worker's output would otherwise interleave with
    other models'). With ``--json`` the model's own report JSON is not
    printed: the matrix prints one document. The command is passed in (by
    :func:`optpipe.cli.build.run_model`) because the library sits below the
    command line; once the build takes one typed options record, this calls
    the library instead.
    """
    import click

    from optpipe.report.junit import ERROR_META_KEY

    build_command: click.Command = command
    params = dict(task.params)
    started = time.perf_counter()
    error: str | None = None
    ctx = click.Context(build_command, info_name="build")
    with _captured(capture, quiet_stdout=bool(params.get("as_json"))) as output:
        try:
            ctx.invoke(build_command.callback, **params)  # type: ignore[arg-type]  # the callback is set
            code = EXIT_OK
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
            error = ctx.meta.get(ERROR_META_KEY)
        except click.ClickException as exc:  # this model's usage error: report it, the others still build
            code = EXIT_USAGE
            click.echo(f"optpipe: error: {one_line(task.where + ': ' + exc.format_message())}", err=True)
            error = f"exit {code}: {type(exc).__name__}: {task.where}: {exc.format_message()}"
    node = NodeInfo.here()
    # A report only counts when this build wrote it: an error (meta set) leaves an older report.json alone.
    finished = error is None and code in (EXIT_OK, EXIT_GATE_FAILED, EXIT_UNJUDGED, EXIT_ENVIRONMENT)
    report = _read_report(task.out_dir) if finished else None
    if report is None and error is None and code != EXIT_OK:
        error = f"build failed with exit code {code} (see the log)"
    return ModelResult(
        name=task.name, out_dir=task.out_dir, exit_code=code, seconds=time.perf_counter() - started, node=node,
        variants=variant_outcomes(report, node) if report else (), error=error if report is None else None,
        report=report, log=output.getvalue() if capture else "",
    )


def _read_report(out_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((out_dir / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_matrix_junit(path: Path, results: Sequence[ModelResult]) -> None:
    """One JUnit file, one test suite per model (an erroring ``build`` case for a model without a report)."""
    from optpipe.report.junit import error_suite, report_suite, write_junit

    suites = [report_suite(r.report, r.name) if r.report is not None
              else error_suite(r.name, r.error or f"build failed with exit code {r.exit_code}")
              for r in results]
    write_junit(Path(path), suites)
