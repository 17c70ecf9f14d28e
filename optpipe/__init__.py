"""optpipe: compile a trained PyTorch model into a fast, verified runtime artifact.

``import optpipe`` is cheap: torch, ONNX Runtime and TensorRT are imported
only by the functions that need them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from optpipe.errors import (
    EnvironmentUnavailable,
    MissingDependency,
    OptpipeError,
    PassError,
    UserInputError,
)
from optpipe.tensor_spec import DynamicDim, TensorSpec

if TYPE_CHECKING:
    from optpipe.report import Report

__version__ = "0.1.0"

__all__ = [
    "DynamicDim",
    "EnvironmentUnavailable",
    "MissingDependency",
    "OptpipeError",
    "PassError",
    "TensorSpec",
    "UserInputError",
    "build",
]


def build(model: Any, example_inputs: Any, *, mlflow: Any = None, **kwargs: Any) -> Report:
    """Compile ``model``; see :func:`optpipe.builder.build` for the options.

    ``mlflow``: True (MLflow's configured tracking URI), a tracking URI, or an
    :class:`optpipe.mlflow_tracking.MlflowTarget`: the finished build is logged
    to an MLflow run (nested when a run is already active). MLflow is checked
    before the build starts, so a missing ``optpipe[mlflow]`` fails fast.
    """
    from optpipe.builder import build as _build

    tracking = None
    if mlflow is not None and mlflow is not False:
        from optpipe.mlflow_tracking import MlflowTarget, import_mlflow

        tracking = MlflowTarget.coerce(mlflow)
        import_mlflow()
    if "provenance" not in kwargs:  # how this build was asked for, in report.json (optpipe.provenance)
        from optpipe.provenance import ProvenanceInputs, api_invocation

        shown = {k: v for k, v in kwargs.items() if k not in ("log", "instruments")}
        kwargs["provenance"] = ProvenanceInputs(invocation=api_invocation(model, shown))
    report = _build(model, example_inputs, **kwargs)
    if tracking is not None and report.out_dir is not None:
        from optpipe.mlflow_tracking import log_report

        log_report(report.to_dict(), report.out_dir, tracking)
    return report
