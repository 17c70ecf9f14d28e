"""The ``tensorrt`` target's engine: a strongly typed TensorRT plan built with Polygraphy.

Precision was already decided in the ONNX graph (FP16 graph, INT8 Q/DQ), so the
network is parsed strongly typed and no precision builder flags exist (TensorRT
11 removed them). The pass writes ``<precision>/model.plan`` and the
``model.plan.json`` sidecar that records which TensorRT version and GPU built
it, so a later load on the wrong machine is refused with a reason. The work is
done by :func:`optpipe.runtime.tensorrt.engine.build_engine`; this module maps build
options onto it and the result onto an artifact and report metrics.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optpipe.core.artifact import Artifact, ArtifactKind
from optpipe.core.errors import UserInputError
from optpipe.infra.declared_options import option
from optpipe.infra.pass_base import BuildContext, Pass, PassResult
from optpipe.runtime.tensorrt.metadata import HARDWARE_LEVELS

PLAN_NAME = "model.plan"
# Sidecar fields copied into the report: what built the plan decides where it can run.
REPORTED_METADATA = (
    "tensorrt_version",
    "gpu_name",
    "compute_capability",
    "cuda_runtime_version",
    "cuda_driver_version",
    "plan_size",
    "plan_sha256",
    "profiles",
    "build_options",
    "timing_cache",
)


@dataclass(frozen=True)
class TrtEngineConfig:
    """Options of the TensorRT engine pass (the ``--opt-level`` ... options of ``optpipe build``)."""

    builder_optimization_level: int = option(
        3, help="0..5: higher searches more tactics (slower build, possibly faster engine); TensorRT's default is 3.",
        flags=("opt_level",))
    workspace_bytes: int | None = option(
        None, help="Cap on the builder's scratch memory (MemoryPoolType.WORKSPACE); None = TensorRT's default (the "
        "GPU).", flags=("workspace",))
    timing_cache: str | None = option(
        None, help="File that keeps kernel timings between builds; loaded only when written by the same TensorRT "
        "version on the same compute capability (else moved aside), rewritten after each build.",
        flags=("timing_cache",))
    hardware_compatibility: str = option(
        "none", help='"none", "ampere_plus" (runs on any GPU with compute capability >= 8.0) or '
        '"same_compute_capability"; portable engines may be slower.', choices=HARDWARE_LEVELS,
        flags=("hardware_compat",))
    version_compatible: bool = option(
        False, help="Let later TensorRT releases of the same major version run the plan (may be slower).",
        flags=("version_compatible",))

    def __post_init__(self) -> None:
        if not 0 <= self.builder_optimization_level <= 5:
            raise UserInputError(
                f"TensorRT builder optimization level must be 0..5, got {self.builder_optimization_level}"
            )
        if self.workspace_bytes is not None and self.workspace_bytes < 1:
            raise UserInputError(f"TensorRT workspace must be positive, got {self.workspace_bytes} bytes")
        if self.hardware_compatibility.lower() not in HARDWARE_LEVELS:
            raise UserInputError(
                f"hardware compatibility must be one of {', '.join(HARDWARE_LEVELS)}, "
                f"got '{self.hardware_compatibility}'"
            )


class TrtEnginePass(Pass):
    """ONNX -> TensorRT plan (kind ``engine``), parsed strongly typed with one optimization profile."""

    name = "engine-trt"
    description = "build a strongly typed TensorRT engine with Polygraphy (model.plan + model.plan.json)"
    input_kind = ArtifactKind.ONNX
    output_kind = ArtifactKind.ENGINE
    Config = TrtEngineConfig

    def run(self, artifact: Artifact, ctx: BuildContext) -> PassResult:
        from optpipe.runtime.tensorrt.engine import build_engine

        assert artifact.path is not None
        plan = ctx.path(artifact.precision, PLAN_NAME)
        cache = Path(self.config.timing_cache) if self.config.timing_cache else None
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        metadata = build_engine(
            artifact.path,
            plan,
            shape_profiles=list(ctx.dynamic),
            input_specs=ctx.input_specs,
            builder_optimization_level=self.config.builder_optimization_level,
            workspace_bytes=self.config.workspace_bytes,
            timing_cache=cache,
            hardware_compatibility=self.config.hardware_compatibility,
            version_compatible=self.config.version_compatible,
        )
        seconds = time.perf_counter() - start
        record = metadata.to_dict()
        metrics: dict[str, Any] = {
            "runtime": "tensorrt",
            "build_seconds": round(seconds, 3),
            **{key: record[key] for key in REPORTED_METADATA},
        }
        engine = artifact.derive(
            kind=ArtifactKind.ENGINE,
            path=plan,
            sha256=metadata.plan_sha256,
            producer=self.name,
            extra={"source_onnx": str(artifact.path)},
        )
        return PassResult(engine, modified=True, metrics=metrics, warnings=list(metadata.warnings))
