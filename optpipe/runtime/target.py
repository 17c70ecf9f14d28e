"""Targets: what a runtime needs from a build.

A target decides the QDQ style of INT8 models, which pass builds its engine,
how an engine is run for validation and timing, and whether this machine can
do that at all. ``cpu`` (ONNX Runtime) is the embedded default and always
available; ``tensorrt`` (:mod:`optpipe.runtime.tensorrt.target`) needs TensorRT and
an NVIDIA GPU, and without them a build stops after every CPU stage (a split
build, exit 3).

A target names its passes by registry key (:mod:`optpipe.infra.registry`) instead of
importing them, and the TensorRT target lives in the ``tensorrt`` package, so
this core module imports neither ``optpipe.passes`` nor ``optpipe.runtime.tensorrt``.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

from optpipe.core.errors import UserInputError

if TYPE_CHECKING:
    from optpipe.core.artifact import Artifact
    from optpipe.runtime.runners import Runner


class Target(ABC):
    """A deployment runtime."""

    name: ClassVar[str]
    description: ClassVar[str]
    qdq_style: ClassVar[str]  # "cpu" (ONNX Runtime fast QDQ) | "tensorrt" (symmetric int8, per-channel)
    #: Registry key of the pass that turns a portable ONNX artifact into this target's engine
    #: (built by :func:`optpipe.infra.registry.engine_pass` with the build's options).
    engine_pass_name: ClassVar[str]
    #: Registry keys of checks that run on the CPU before the engine build (e.g. the TensorRT lint).
    check_pass_names: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def runner(self, artifact: Artifact, threads: int | None) -> Runner:
        """A runner for an engine artifact of this target."""

    def check_available(self) -> None:  # noqa: B027  (optional hook: available unless overridden)
        """Raise EnvironmentUnavailable when this machine cannot build/run engines."""


class CpuTarget(Target):
    name = "cpu"
    description = "ONNX Runtime, CPU execution provider (always available)"
    qdq_style = "cpu"
    engine_pass_name = "engine-ort"

    def runner(self, artifact: Artifact, threads: int | None) -> Runner:
        from optpipe.runtime.runners import OrtRunner

        assert artifact.path is not None
        return OrtRunner(artifact.path, threads=threads)


#: Target name -> (module, class). Data, so choosing a target imports only that target's module.
TARGET_CLASSES: dict[str, tuple[str, str]] = {
    "cpu": ("optpipe.runtime.target", "CpuTarget"),
    "tensorrt": ("optpipe.runtime.tensorrt.target", "TensorRTTarget"),
}


def get_target(name: str) -> Target:
    """Look a target up by name; unknown names list the known ones."""
    try:
        module, cls = TARGET_CLASSES[name]
    except KeyError:
        raise UserInputError(f"unknown target '{name}'; choose one of: {', '.join(TARGET_CLASSES)}") from None
    target: Target = getattr(importlib.import_module(module), cls)()
    return target
