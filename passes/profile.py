"""engine -> engine: where the engine's time goes, per op type and per node (``--profile``).

Runs after its variant's validate, in its own session that ends before the
build's one benchmark run: ONNX Runtime's profiler (or TensorRT's per-layer
profiler on a GPU machine) adds overhead per node, so it must not run inside
the timed loop. The artifact is unchanged; the profile
goes to ``report.json`` (``variants[].profile``), the console and report.html.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from optpipe.core.artifact import Artifact, ArtifactKind
from optpipe.core.errors import UserInputError
from optpipe.infra.pass_base import BuildContext, Pass, PassResult
from optpipe.precision.node_modules import node_module_paths
from optpipe.runtime.op_profile import profile_onnx


@dataclass(frozen=True)
class ProfileConfig:
    """Options of the profile pass."""

    runs: int = 20  # profiled runs over the golden cases, after one warm-up run
    top: int = 15  # slowest nodes listed


class ProfilePass(Pass):
    """engine -> engine: per-op and per-node time with PyTorch module paths."""

    name = "profile"
    description = "profile the engine per op type and node on the golden inputs (ONNX Runtime / TensorRT profiler)"
    input_kind = ArtifactKind.ENGINE
    output_kind = ArtifactKind.ENGINE
    Config = ProfileConfig

    def requires(self, artifact: Artifact, ctx: BuildContext) -> None:
        if ctx.golden is None or not ctx.golden.cases:
            raise UserInputError("profiling needs golden inputs")
        if self.config.runs < 1:
            raise UserInputError(f"profile runs must be >= 1, got {self.config.runs}")

    def run(self, artifact: Artifact, ctx: BuildContext) -> PassResult:
        assert ctx.golden is not None and artifact.path is not None
        feeds = [case.inputs for case in ctx.golden.cases]
        source = artifact.extra.get("source_onnx")
        sources = [Path(str(source))] if source else []
        # the simplified model, then the exported one: the exporter's module scopes can be lost on the way
        sources += [ctx.work_dir / "model.onnx", ctx.work_dir / "model.export.onnx"]
        if ctx.target.name == "tensorrt":
            from optpipe.runtime.tensorrt.layer_timing import engine_layer_timing

            runner = ctx.target.runner(artifact, ctx.threads)
            try:
                profile = engine_layer_timing(runner, feeds, node_module_paths(sources), runs=self.config.runs,
                                         top=self.config.top)
            finally:
                getattr(runner, "close", lambda: None)()
        else:
            paths = node_module_paths([artifact.path, *sources])
            profile = profile_onnx(artifact.path, feeds, paths=paths, runs=self.config.runs, threads=ctx.threads,
                                   top=self.config.top)
        return PassResult(artifact, modified=False, metrics={"profile": profile.to_dict()})
