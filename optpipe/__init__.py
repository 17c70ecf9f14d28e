"""optpipe: compile a trained PyTorch model into a fast, verified runtime artifact.

``import optpipe`` is cheap: torch, ONNX Runtime and TensorRT are imported
only by the functions that need them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from optpipe.core.errors import (
    EnvironmentUnavailable,
    MissingDependency,
    OptpipeError,
    PassError,
    UserInputError,
)
from optpipe.core.tensor_spec import DynamicDim, TensorSpec
from optpipe.core.version import __version__ as __version__

if TYPE_CHECKING:  # the typed signatures, for type checkers and IDEs; imported lazily at run time
    from optpipe.builder.run import build
    from optpipe.cli.build_many import build_many


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


def __getattr__(name: str) -> Any:
    """``optpipe.build`` is :func:`optpipe.builder.run.build` (keyword-only, typed), imported on first use.

    So ``import optpipe`` stays cheap: numpy, ONNX and torch load only when a build starts.
    """
    if name == "build":
        from optpipe.builder.run import build

        return build
    if name == "build_many":  # the models of config files (``optpipe build -c``), by any executor
        from optpipe.cli.build_many import build_many

        return build_many
    raise AttributeError(f"module 'optpipe' has no attribute '{name}'")
