"""The ``cpu`` target's engine: an ONNX Runtime-optimized model file.

ONNX Runtime applies its graph optimisations and saves the result. That file
contains ``com.microsoft`` fused ops (Gelu, FusedConv, QLinear* kernels...):
it is specific to ONNX Runtime's CPU provider and is therefore named
``model.ort-cpu.onnx``; the portable ONNX stays next to it. The EXTENDED level
is saved (layout-specific ALL-level rewrites are re-applied when the session
loads, so the file does not depend on this CPU's instruction set).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from optpipe.core.artifact import Artifact, ArtifactKind, sha256_files
from optpipe.core.machine import package_version
from optpipe.infra.declared_options import option
from optpipe.infra.pass_base import BuildContext, Pass, PassResult
from optpipe.onnx.utils import EXTERNAL_DATA_ABOVE, load_onnx, non_standard_ops, onnx_bytes, onnx_files
from optpipe.runtime.runners import ort_session_options

ENGINE_SUFFIX = ".ort-cpu.onnx"
#: The offline optimisation levels ONNX Runtime saves in the file.
LEVELS = ("basic", "extended")


@dataclass(frozen=True)
class OrtEngineConfig:
    """Options of the ONNX Runtime engine pass."""

    level: str = option("extended", help="offline optimisation level saved in the file: basic | extended",
                        choices=LEVELS)
    # Weights above this many bytes go to ``<file>.data`` beside the model (build's --external-data-above).
    external_data_above: int = EXTERNAL_DATA_ABOVE


class OrtEnginePass(Pass):
    """ONNX -> ONNX Runtime-optimized model (kind ``engine``)."""

    name = "engine-ort"
    description = "optimize for ONNX Runtime CPU and save the runtime-specific model (model.ort-cpu.onnx)"
    input_kind = ArtifactKind.ONNX
    output_kind = ArtifactKind.ENGINE
    Config = OrtEngineConfig
    uses = ("onnx", "onnxruntime")
    cacheable = True

    def run(self, artifact: Artifact, ctx: BuildContext) -> PassResult:
        import onnxruntime as ort

        assert artifact.path is not None
        path = ctx.path(artifact.precision, "model" + ENGINE_SUFFIX)
        options = ort_session_options(ctx.threads, self.config.level)
        options.optimized_model_filepath = str(path)
        # This session only writes the optimized file: packing the MatMul weights for this CPU's kernels
        # would add a copy of them to the build's peak RSS, and packed weights are never saved in the file.
        options.add_session_config_entry("session.disable_prepacking", "1")
        data = path.parent / f"{path.name}.data"
        data.unlink(missing_ok=True)  # ORT appends to an existing file
        if onnx_bytes(artifact.path) > self.config.external_data_above:  # ORT's own external-data path
            options.add_session_config_entry("session.optimized_model_external_initializers_file_name", data.name)
            options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                             "1024")
        ort.InferenceSession(str(artifact.path), sess_options=options, providers=["CPUExecutionProvider"])
        optimized = load_onnx(path, load_external_data=False)
        metrics: dict[str, Any] = {
            "runtime": "onnxruntime",
            "onnxruntime": package_version("onnxruntime"),
            "level": self.config.level,
            "nodes": len(optimized.graph.node),
            "runtime_specific_ops": dict(non_standard_ops(optimized)),
        }
        engine = artifact.derive(
            kind=ArtifactKind.ENGINE,
            path=path,
            sha256=sha256_files(onnx_files(path)),
            producer="engine-ort",
            extra={"source_onnx": str(artifact.path)},
        )
        return PassResult(engine, modified=True, metrics=metrics)
