"""Targets: what a runtime needs from a build.

A target decides the QDQ style of INT8 models, which pass builds its engine,
how an engine is run for validation and timing, and whether this machine can
do that at all. ``cpu`` (ONNX Runtime) is the embedded default and always
available; ``tensorrt`` needs TensorRT and an NVIDIA GPU, and without them a
build stops after every CPU stage (a split build, exit 3).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from optpipe.errors import UserInputError

if TYPE_CHECKING:
    from optpipe.artifact import Artifact
    from optpipe.build_options import TensorRTOptions
    from optpipe.pass_base import Pass
    from optpipe.runtime import Runner


class Target(ABC):
    """A deployment runtime."""

    name: str
    description: str
    qdq_style: str  # "cpu" (ONNX Runtime fast QDQ) | "tensorrt" (symmetric int8, per-channel)

    @abstractmethod
    def engine_pass(self, trt: TensorRTOptions | None = None) -> Pass:
        """The pass that turns a portable ONNX artifact into this target's engine.

        ``trt`` are the build's TensorRT options, so they end up in the pass's frozen config.
        """

    @abstractmethod
    def runner(self, artifact: Artifact, threads: int | None) -> Runner:
        """A runner for an engine artifact of this target."""

    def check_available(self) -> None:  # noqa: B027  (optional hook: available unless overridden)
        """Raise EnvironmentUnavailable when this machine cannot build/run engines."""

    def pre_engine_passes(self) -> list[Pass]:
        """Checks that run on the CPU before the engine build (e.g. the TensorRT lint)."""
        return []


class CpuTarget(Target):
    name = "cpu"
    description = "ONNX Runtime, CPU execution provider (always available)"
    qdq_style = "cpu"

    def engine_pass(self, trt: TensorRTOptions | None = None) -> Pass:
        from optpipe.passes.engine_ort import OrtEnginePass

        return OrtEnginePass()

    def runner(self, artifact: Artifact, threads: int | None) -> Runner:
        from optpipe.runtime import OrtRunner

        assert artifact.path is not None
        return OrtRunner(artifact.path, threads=threads)


class TensorRTTarget(Target):
    name = "tensorrt"
    description = "TensorRT on an NVIDIA GPU (strongly typed engine built with Polygraphy)"
    qdq_style = "tensorrt"

    def engine_pass(self, trt: TensorRTOptions | None = None) -> Pass:
        from optpipe.build_options import TensorRTOptions
        from optpipe.passes.engine_trt import TrtEnginePass

        return TrtEnginePass.from_options(trt or TensorRTOptions())

    def pre_engine_passes(self) -> list[Pass]:
        """The static TensorRT lint: runs on the CPU, so a split build stops here on a bad model."""
        from optpipe.passes.trt_lint import TrtLintPass

        return [TrtLintPass()]

    def runner(self, artifact: Artifact, threads: int | None) -> Runner:
        from optpipe.tensorrt.engine import TrtEngineRunner

        assert artifact.path is not None
        return TrtEngineRunner(artifact.path)  # a Runner structurally (output_names, infer)

    def check_available(self) -> None:
        from optpipe.tensorrt.engine import check_trt_available

        check_trt_available()


TARGETS: dict[str, type[Target]] = {"cpu": CpuTarget, "tensorrt": TensorRTTarget}


def get_target(name: str) -> Target:
    """Look a target up by name; unknown names list the known ones."""
    try:
        return TARGETS[name]()
    except KeyError:
        raise UserInputError(f"unknown target '{name}'; choose one of: {', '.join(TARGETS)}") from None
