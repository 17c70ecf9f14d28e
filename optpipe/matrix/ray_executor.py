"""Build the models of a matrix as Ray tasks (``optpipe build -c FILE --executor ray...``).

Why Ray: a matrix of many models outgrows one machine, and Ray already
schedules, retries and cancels tasks across nodes; optpipe only decides what
a task needs. Imported only when an executor ``ray...`` is asked for; Ray is
the optional extra ``optpipe[ray]``.

Design:

* One Ray task per model: :func:`optpipe.cli.build.run_model`, the function the
  in-process executor calls (shipped to the worker by name). The task carries the model's resolved build
  parameters; the files they name (model file, weights, calibration data,
  output and cache directories) travel *by path*, so they must be on a
  filesystem every node mounts at the same path.
* Timing integrity: a build that benchmarks runs as one task that holds a
  node's whole CPU count and one ``optpipe_bench`` resource (1 per node), so
  no other optpipe task (build or benchmark) runs beside its timing loop.
  The whole build, not only its benchmark step, takes the node: ``precision
  = "auto"`` picks its variant by the latencies measured inside the build,
  and a published build directory is never reopened to add timings. Builds
  with ``--no-benchmark`` are ordinary tasks (``threads`` CPUs, default 1)
  spread over the nodes. The matrix records the node of every task and, per
  variant, the node its latency was measured on.
* Faults: a task whose worker dies is retried by Ray (``max_retries``); the
  build directory is staged and swapped in whole, so a killed attempt leaves
  at most a hidden ``.optpipe-partial-*`` directory, never a published one.
  A model whose build fails is a result with its exit code; the others go
  on. Ctrl-C cancels the outstanding tasks (``ray.cancel(force=True)``).
* Progress: tasks report their start to a zero-CPU actor, so the driver can
  print how many builds are queued, running, done and failed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from optpipe.core.errors import EXIT_ENVIRONMENT, EnvironmentUnavailable, MissingDependency, UserInputError, first_line
from optpipe.matrix.tasks import MatrixCounts, ModelResult, ModelRunner, ModelTask, ProgressCallback

#: The per-node custom resource a benchmarking build takes (start each node with ``--resources
#: '{"optpipe_bench": 1}'``; the local Ray of ``--executor ray`` has it).
BENCH_RESOURCE = "optpipe_bench"


def import_ray() -> Any:
    """``ray``, or a MissingDependency (exit 3) that names the extra."""
    try:
        import ray
    except ImportError:
        raise MissingDependency("ray", "ray", "--executor ray (building on a Ray cluster)") from None
    return ray


class StartedBoard:
    """A zero-CPU actor: which tasks started and how often (a retried task starts again)."""

    def __init__(self) -> None:
        self.attempts: dict[int, int] = {}

    def started(self, index: int) -> None:
        self.attempts[index] = self.attempts.get(index, 0) + 1

    def snapshot(self) -> dict[int, int]:
        return dict(self.attempts)


def build_task(index: int, task: ModelTask, board: Any, runner: ModelRunner) -> ModelResult:
    """The body of one Ray task: say it started, then build the model like the in-process executor."""
    board.started.remote(index)
    return runner(task, capture=True)


@dataclass(frozen=True)
class ClusterShape:
    """What the scheduler needs from the cluster: CPUs per alive node and the CPUs of benchmark nodes."""

    max_cpus: int
    bench_cpus: int | None  # the CPU count a benchmark task takes (None: no node offers optpipe_bench)

    @classmethod
    def of(cls, ray: Any) -> ClusterShape:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        cpus = [int(n["Resources"].get("CPU", 0)) for n in nodes]
        bench = [int(n["Resources"].get("CPU", 0)) for n in nodes if n["Resources"].get(BENCH_RESOURCE, 0) >= 1]
        # max: a node with fewer CPUs cannot take the task, so a benchmark always holds its node's every CPU.
        return cls(max(cpus, default=1), max(bench, default=0) or None)


def task_options(task: ModelTask, shape: ClusterShape, max_retries: int) -> dict[str, Any]:
    """Ray resources for one model: a whole benchmark node, or ``threads`` CPUs (default 1) anywhere."""
    options: dict[str, Any] = {"max_retries": max_retries, "retry_exceptions": False}
    if task.benchmark:
        if shape.bench_cpus is None:
            raise EnvironmentUnavailable(
                f"{task.where}: benchmarks need a Ray node with the '{BENCH_RESOURCE}' resource (start nodes with "
                f"ray start --resources '{{\"{BENCH_RESOURCE}\": 1}}'), or build with --no-benchmark")
        return {**options, "num_cpus": shape.bench_cpus, "resources": {BENCH_RESOURCE: 1}}
    threads = int(task.params.get("threads") or 1)
    return {**options, "num_cpus": min(threads, shape.max_cpus), "scheduling_strategy": "SPREAD"}


def local_cpus() -> int:
    """CPUs of the local Ray: ``$OPTPIPE_RAY_NUM_CPUS`` or every core."""
    text = os.environ.get("OPTPIPE_RAY_NUM_CPUS")
    if text is None:
        return os.cpu_count() or 1
    if not text.isdigit() or int(text) < 1:
        raise UserInputError(f"OPTPIPE_RAY_NUM_CPUS={text!r}: expected a whole number of CPUs, 1 or more")
    return int(text)


#: Connection attempts to a Ray Client server (``ray://``) whose per-client server failed to start.
CLIENT_ATTEMPTS = 3


def _server_failed_to_start(error: Exception) -> bool:
    """The Ray Client server answered but its per-client server did not start: worth another attempt.

    Why: the proxy forks that server while gRPC threads run ("skipping fork() handlers"); now and then
    the child's epoll gets a bad file descriptor and dies (seen here in 1 of 3 connections under load);
    the next attempt gets a fresh child. An unreachable address is not retried.
    """
    return "Initialization failure from server" in str(error)


@dataclass(frozen=True)
class RayExecutor:
    """Builds each model as a Ray task.

    ``address``: ``None`` starts a local Ray for the run (``num_cpus``, default :func:`local_cpus`, in a temporary
    directory removed afterwards); ``"ray:auto"`` joins the cluster ``ray start`` made on this machine (or
    ``$RAY_ADDRESS``); ``"ray://HOST:PORT"`` connects through Ray Client. When the caller already called
    ``ray.init``, that connection is used and left open.
    """

    address: str | None = None
    num_cpus: int | None = None
    max_retries: int = 3

    @property
    def name(self) -> str:
        return "ray (local)" if self.address is None else f"ray ({self.address})"

    def run(self, tasks: Sequence[ModelTask], runner: ModelRunner, progress: ProgressCallback | None = None,
            echo: Callable[[str], None] | None = None) -> list[ModelResult]:
        ray = import_ray()
        with self._connected(ray):
            return run_on_cluster(ray, tasks, runner, self.max_retries, progress, echo)

    @contextlib.contextmanager
    def _connected(self, ray: Any) -> Iterator[None]:
        if ray.is_initialized():
            yield
            return
        quiet: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
        if self.address is None:
            temp = tempfile.mkdtemp(prefix="optpipe-ray-")
            try:
                ray.init(num_cpus=self.num_cpus or local_cpus(), resources={BENCH_RESOURCE: 1},
                         include_dashboard=False, _temp_dir=temp, **quiet)
                yield
            finally:
                ray.shutdown()
                shutil.rmtree(temp, ignore_errors=True)
            return
        address = "auto" if self.address == "ray:auto" else self.address
        for attempt in range(1, CLIENT_ATTEMPTS + 1):
            try:
                ray.init(address=address, **quiet)
                break
            except Exception as error:  # ConnectionError, RuntimeError, grpc errors: all mean "no cluster there"
                if attempt < CLIENT_ATTEMPTS and _server_failed_to_start(error):
                    ray.shutdown()
                    time.sleep(attempt)
                    continue
                raise EnvironmentUnavailable(f"--executor {self.address}: cannot connect to a Ray cluster "
                                             f"({first_line(error, with_type=False)})") from None
        try:
            yield
        finally:
            ray.shutdown()


def run_on_cluster(ray: Any, tasks: Sequence[ModelTask], runner: ModelRunner, max_retries: int,
                   progress: ProgressCallback | None, echo: Callable[[str], None] | None) -> list[ModelResult]:
    """Submit every task, collect results as they finish; Ctrl-C cancels what is still outstanding."""
    shape = ClusterShape.of(ray)
    options = [task_options(task, shape, max_retries) for task in tasks]  # every error before any submit
    board = ray.remote(num_cpus=0)(StartedBoard).remote()
    remote = ray.remote(build_task)
    refs = {remote.options(**opts).remote(index, task, board, runner): index
            for index, (task, opts) in enumerate(zip(tasks, options, strict=True))}
    results: dict[int, ModelResult] = {}
    pending = list(refs)
    last: MatrixCounts | None = None
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
            attempts = ray.get(board.snapshot.remote())
            for ref in ready:
                index = refs[ref]
                results[index] = _result(ray, ref, tasks[index], attempts.get(index, 1))
                if echo is not None and results[index].log:
                    echo(f"== {tasks[index].name} (attempt {results[index].attempts}):\n"
                         f"{results[index].log.rstrip()}")
            now = _counts(len(tasks), attempts, results)
            if progress is not None and now != last:
                progress(now)
                last = now
    except KeyboardInterrupt:
        for ref in pending:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        raise
    return [results[index] for index in range(len(tasks))]


def _counts(total: int, attempts: dict[int, int], results: dict[int, ModelResult]) -> MatrixCounts:
    running = sum(1 for index in attempts if index not in results)
    failed = sum(1 for r in results.values() if r.exit_code != 0)
    return MatrixCounts(queued=total - running - len(results), running=running, done=len(results) - failed,
                        failed=failed)


def _result(ray: Any, ref: Any, task: ModelTask, attempts: int) -> ModelResult:
    """The task's result; a task Ray could not finish (worker died after every retry...) is an exit-3 result."""
    try:
        result: ModelResult = ray.get(ref)
    except ray.exceptions.RayError as error:
        message = f"exit {EXIT_ENVIRONMENT}: {type(error).__name__}: {first_line(error, with_type=False)}"
        return ModelResult(task.name, task.out_dir, EXIT_ENVIRONMENT, 0.0, None, error=message, attempts=attempts)
    return dataclasses.replace(result, attempts=attempts)
