"""Where the models of a build matrix are built: in this process, or on a Ray cluster.

An executor takes the matrix's :class:`~optpipe.matrix.tasks.ModelTask` list and
returns one :class:`~optpipe.matrix.tasks.ModelResult` per task, in order; every
executor builds a model with the same runner, :func:`optpipe.cli.build.run_model`
(passed in: this layer sits below the command line). The
default, :class:`InProcessExecutor`, is today's sequential loop of
``optpipe build -c``. ``--executor ray`` / ``ray:auto`` / ``ray://HOST:PORT``
select :class:`optpipe.matrix.ray_executor.RayExecutor`, imported only then (Ray is
the optional extra ``optpipe[ray]``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

from optpipe.core.errors import EXIT_OK, UserInputError
from optpipe.matrix.tasks import MatrixCounts, MatrixResult, ModelResult, ModelRunner, ModelTask, ProgressCallback

IN_PROCESS = "in-process"
EXECUTOR_HELP = "in-process (default), ray (a local Ray started for the run), ray:auto or ray://HOST:PORT"


class Executor(Protocol):
    """Builds the tasks of a matrix; returns their results in the tasks' order."""

    @property
    def name(self) -> str: ...

    def run(self, tasks: Sequence[ModelTask], runner: ModelRunner, progress: ProgressCallback | None = None,
            echo: Callable[[str], None] | None = None) -> list[ModelResult]: ...


def counts(total: int, started: int, results: Sequence[ModelResult]) -> MatrixCounts:
    """Progress counts from how many tasks started and the results so far."""
    failed = sum(1 for r in results if r.exit_code != EXIT_OK)
    return MatrixCounts(queued=total - started, running=started - len(results), done=len(results) - failed,
                        failed=failed)


class InProcessExecutor:
    """Builds the models one after the other in this process, printing their output as it comes."""

    name = IN_PROCESS

    def run(self, tasks: Sequence[ModelTask], runner: ModelRunner, progress: ProgressCallback | None = None,
            echo: Callable[[str], None] | None = None) -> list[ModelResult]:
        results: list[ModelResult] = []
        for index, task in enumerate(tasks):
            if progress is not None:
                progress(counts(len(tasks), index + 1, results))
            if echo is not None and len(tasks) > 1:
                echo(f"== {task.name} -> {task.out_dir}")
            results.append(runner(task))
        if progress is not None and tasks:
            progress(counts(len(tasks), len(tasks), results))
        return results


def get_executor(spec: str | Executor | None) -> Executor:
    """The executor an ``--executor`` value names (an Executor instance is returned as is)."""
    if spec is None or spec in (IN_PROCESS, "inprocess"):
        return InProcessExecutor()
    if not isinstance(spec, str):
        return spec
    if spec == "ray" or spec == "ray:auto" or spec.startswith("ray://"):
        from optpipe.matrix.ray_executor import RayExecutor

        if spec.startswith("ray://") and not spec[len("ray://"):]:
            raise UserInputError("--executor ray://: missing HOST:PORT of the Ray cluster's client server")
        return RayExecutor(address=None if spec == "ray" else spec)
    raise UserInputError(f"--executor: unknown executor '{spec}'; expected {EXECUTOR_HELP}")


def run_matrix(tasks: Sequence[ModelTask], executor: Executor, runner: ModelRunner,
               progress: ProgressCallback | None = None, echo: Callable[[str], None] | None = None) -> MatrixResult:
    """Build every task with ``executor`` (each by ``runner``) and collect the matrix result."""
    started = time.perf_counter()
    results = executor.run(tasks, runner, progress, echo)
    return MatrixResult(tuple(results), executor.name, time.perf_counter() - started)
