"""``build_many``: the Python face of ``optpipe build -c FILE...`` (a build matrix, any executor)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from optpipe.cli.build import build, run_model
from optpipe.core.errors import UserInputError

if TYPE_CHECKING:
    from optpipe.matrix.executors import Executor
    from optpipe.matrix.tasks import MatrixResult, ModelTask, ProgressCallback


def build_many(configs: str | Path | Sequence[str | Path], executor: str | Executor | None = None, *,
               select: str | None = None, progress: ProgressCallback | None = None) -> MatrixResult:
    """Build every ``[[model]]`` of one or more config files (``optpipe build -c``) with ``executor``.

    ``executor``: ``None``/``"in-process"``, ``"ray"``, ``"ray:auto"``, ``"ray://HOST:PORT"`` or an
    executor object (e.g. ``RayExecutor(num_cpus=2)``). ``select`` keeps one model by name. A model whose
    build fails is a result with its exit code, not an exception; a config error raises
    :class:`~optpipe.matrix.config_file.ConfigError` before anything is built. ``MatrixResult.to_json()`` and
    :func:`optpipe.matrix.tasks.write_matrix_junit` give the command line's ``--json`` and ``--junit`` outputs.
    """
    from optpipe.matrix.config_file import tasks_from_file
    from optpipe.matrix.executors import get_executor, run_matrix

    paths = [configs] if isinstance(configs, str | Path) else list(configs)
    tasks: list[ModelTask] = []
    for path in paths:
        tasks.extend(tasks_from_file(Path(path), build, select))
    if not tasks:
        raise UserInputError("build_many: no config file given")
    return run_matrix(tasks, get_executor(executor), run_model, progress)
