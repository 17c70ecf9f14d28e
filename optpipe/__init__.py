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
    from optpipe.matrix import MatrixResult
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
    "build_many",
]


def build(model: Any, example_inputs: Any, **kwargs: Any) -> Report:
    """Compile ``model``; see :func:`optpipe.builder.build` for the options."""
    from optpipe.builder import build as _build

    return _build(model, example_inputs, **kwargs)


def build_many(configs: Any, executor: Any = None, **kwargs: Any) -> MatrixResult:
    """Build the models of config files with an executor; see :func:`optpipe.cli.build_many`."""
    from optpipe.cli import build_many as _build_many

    return _build_many(configs, executor, **kwargs)
