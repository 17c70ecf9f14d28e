"""Log a finished build to MLflow, the experiment tracker of most MLOps pipelines.

It reads only the finished build directory (``report.json``, ``report.html``,
``manifest.json`` and the artifacts they name), so it is independent of how the
build ran and can also log a directory built earlier (:func:`log_build_dir`).

What goes where in the run:

* parameters: model spec, target, precisions, tolerances, dynamic dims, input
  specs, and the versions of python/torch/onnx/onnxruntime/optpipe;
* metrics: :func:`optpipe.report.metrics.flat_metrics` (``int8.p50_ms``,
  ``int8.cosine_min.logits``, ``int8.accuracy``, ``int8.size_bytes``, ...);
* artifacts: the report files under ``optpipe/`` and the selected variant's
  artifact under ``optpipe/artifact/``;
* tags: ``optpipe.passed``, ``optpipe.status``, ``optpipe.selected``,
  ``optpipe.runtime.target``, ``optpipe.exit_code``.

MLflow is optional (``pip install 'optpipe[mlflow]'``) and imported only here.
Inside an active run (an MLOps job that already called ``mlflow.start_run()``)
optpipe logs into a nested child run, so the job's own parameters never clash
with optpipe's.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optpipe.core.errors import EnvironmentUnavailable, MissingDependency, UserInputError, first_line
from optpipe.report.metrics import flat_metrics

logger = logging.getLogger("optpipe")

REPORT_FILES = ("report.json", "report.html", "manifest.json")
VERSION_KEYS = ("python", "torch", "onnx", "onnxruntime", "onnxslim", "tensorrt", "optpipe")
MAX_PARAM_CHARS = 6000  # MLflow's limit on a parameter value (older servers: 500; long values are cut)


@dataclass(frozen=True)
class MlflowTarget:
    """Where to log: ``tracking_uri`` None keeps MLflow's own setting (``MLFLOW_TRACKING_URI``)."""

    tracking_uri: str | None = None
    experiment: str | None = None
    run_name: str | None = None

    @classmethod
    def coerce(cls, value: bool | str | MlflowTarget | None) -> MlflowTarget | None:
        """``build(mlflow=...)``: True (MLflow's defaults), a tracking URI, or an MlflowTarget."""
        if value is None or value is False:
            return None
        if isinstance(value, MlflowTarget):
            return value
        if value is True or value == "":
            return cls()
        if isinstance(value, str):
            return cls(tracking_uri=value)
        raise UserInputError(f"mlflow=: expected True, a tracking URI or an MlflowTarget, got {value!r}")


def import_mlflow() -> Any:
    """``import mlflow`` or a MissingDependency naming the extra (exit 3); called before a build starts."""
    try:
        import mlflow
    except ImportError as exc:
        raise MissingDependency("mlflow", "mlflow", "--mlflow (logging the build to MLflow)") from exc
    return mlflow


#: Seconds to wait for a tracking server: the TCP check before the build, and each HTTP request after it.
CONNECT_SECONDS = 5.0
#: MLflow's own retry settings while optpipe logs, unless the user set them (MLflow's defaults: 120 s per
#: request and 7 retries with backoff, so an unreachable server stayed silent for minutes).
BOUNDED_HTTP = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "30", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2"}


def check_tracking_uri(uri: str | None) -> None:
    """Fail fast, before any build work, on a tracking URI that cannot work.

    ``uri`` None or empty means MLflow's default (``$MLFLOW_TRACKING_URI``). An ``http(s)://`` server
    that does not accept a TCP connection within :data:`CONNECT_SECONDS` is an EnvironmentUnavailable
    (exit 3); an ``sqlite:///PATH`` whose PATH is a directory (MLflow retried it for 106 s) a UserInputError.
    """
    import os
    import socket
    from urllib.parse import urlparse

    text = uri or os.environ.get("MLFLOW_TRACKING_URI") or ""
    parsed = urlparse(text)
    if parsed.scheme in ("http", "https"):
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            with socket.create_connection((parsed.hostname or "localhost", port), timeout=CONNECT_SECONDS):
                pass
        except (OSError, ValueError) as error:
            reason = getattr(error, "strerror", None) or first_line(error)
            raise EnvironmentUnavailable(f"--mlflow {text}: the tracking server cannot be reached ({reason}); "
                                         "nothing was built") from None
    elif text.startswith("sqlite:///"):  # sqlite:///relative.db, sqlite:////absolute/path.db
        path = Path(text[len("sqlite:///"):])
        if path.is_dir():
            raise UserInputError(f"--mlflow {text}: {path} is a directory, not an SQLite database file")


@contextlib.contextmanager
def _bounded_http() -> Iterator[None]:
    """MLflow's HTTP timeout and retries bounded (:data:`BOUNDED_HTTP`) while logging, unless already set."""
    import os

    added = [name for name in BOUNDED_HTTP if name not in os.environ]
    os.environ.update({name: BOUNDED_HTTP[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def _param_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."


def run_params(report: Mapping[str, Any]) -> dict[str, str]:
    """The build's inputs and software versions, as MLflow parameters (strings)."""
    build = report.get("build") or {}
    params: dict[str, Any] = {
        "model": report.get("model") or "",
        "target": report.get("target") or "",
        "precisions": ",".join(v.get("precision", "?") for v in report.get("variants") or []),
    }
    for key in ("tolerances", "dynamic", "inputs", "outputs"):
        if build.get(key) not in (None, {}, []):
            params[key] = build[key]
    export = next((p for p in report.get("passes") or [] if p.get("name") == "export"), None)
    if export and (export.get("metrics") or {}).get("opset") is not None:
        params["opset"] = export["metrics"]["opset"]
    environment = report.get("environment") or {}
    for key in VERSION_KEYS:
        if environment.get(key):
            params[f"version.{key}"] = environment[key]
    return {key: _param_text(value) for key, value in params.items()}


def run_tags(report: Mapping[str, Any]) -> dict[str, str]:
    selected = (report.get("selected") or {}).get("precision") or _only_passing(report) or ""
    return {
        "optpipe.passed": str(bool(report.get("passed"))).lower(),
        "optpipe.status": str(report.get("status") or ""),
        "optpipe.exit_code": str(report.get("exit_code")),
        "optpipe.target": str(report.get("target") or ""),
        "optpipe.selected": selected,
    }


def _only_passing(report: Mapping[str, Any]) -> str | None:
    """Without ``--precision auto`` nothing is "selected"; one passing variant is the obvious one."""
    passing = [v for v in report.get("variants") or [] if v.get("passed") and v.get("artifact")]
    return passing[0]["precision"] if len(passing) == 1 else None


def selected_artifact(report: Mapping[str, Any], out_dir: Path) -> Path | None:
    """The file to deploy: the selected (or only passing) variant's artifact, when it exists."""
    precision = run_tags(report)["optpipe.selected"]
    for variant in report.get("variants") or []:
        if variant.get("precision") == precision and variant.get("artifact"):
            path = out_dir / variant["artifact"]
            return path if path.is_file() else None
    return None


def log_report(report: Mapping[str, Any], out_dir: Path, target: MlflowTarget) -> str:
    """Log one finished build to MLflow and return the run id.

    A tracking store that cannot be reached or refuses the run is an
    EnvironmentUnavailable (exit 3): the build directory is complete, but a
    pipeline that asked for tracking must not believe it was recorded.
    """
    mlflow = import_mlflow()
    logger.info("mlflow: logging the build to %s ...", target.tracking_uri or "MLflow's default tracking URI")
    try:
        with _bounded_http():
            return _log(mlflow, report, out_dir, target)
    except Exception as error:  # MlflowException, OSError, requests errors: one line, exit 3
        raise EnvironmentUnavailable(
            f"the build in {out_dir} is complete, but logging it to MLflow failed: {first_line(error)}"
        ) from error


def _log(mlflow: Any, report: Mapping[str, Any], out_dir: Path, target: MlflowTarget) -> str:
    if target.tracking_uri:
        mlflow.set_tracking_uri(target.tracking_uri)
    if target.experiment:
        mlflow.set_experiment(target.experiment)
    nested = mlflow.active_run() is not None
    run_name = target.run_name or f"optpipe {report.get('model') or out_dir.name}"
    with mlflow.start_run(run_name=run_name, nested=nested) as run:
        mlflow.log_params(run_params(report))
        mlflow.log_metrics(flat_metrics(report, out_dir))
        mlflow.set_tags(run_tags(report))
        for name in REPORT_FILES:
            if (out_dir / name).is_file():
                mlflow.log_artifact(str(out_dir / name), artifact_path="optpipe")
        artifact = selected_artifact(report, out_dir)
        if artifact is not None:
            for path in [artifact, *sorted(artifact.parent.glob(artifact.name + ".data"))]:
                mlflow.log_artifact(str(path), artifact_path="optpipe/artifact")
        run_id: str = run.info.run_id
    logger.info("logged to MLflow run %s%s", run_id, " (nested in the active run)" if nested else "")
    return run_id


def log_build_dir(out_dir: str | Path, target: MlflowTarget | None = None) -> str:
    """Log the build in ``out_dir`` (its ``report.json``) to MLflow; returns the run id."""
    directory = Path(out_dir)
    report_path = directory / "report.json"
    from optpipe.report.build_report import ReportUnreadable, read_report  # the one reader of report.json

    try:
        report = read_report(report_path).to_dict()
    except ReportUnreadable as error:
        raise UserInputError(f"{report_path}: cannot read the build report: {error}") from None
    return log_report(report, directory, target or MlflowTarget())
