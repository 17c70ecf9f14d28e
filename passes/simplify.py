"""Simplify the ONNX graph with onnxslim, and prove nothing changed.

onnxslim folds constants and fuses patterns. Its output is accepted only if it
is still portable ONNX (standard op domains, so TensorRT and other runtimes
can load it) and computes the same values as its input on the golden inputs;
otherwise the pass keeps its input and says why (``modified`` is False).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from optpipe.core.artifact import Artifact, ArtifactKind, sha256_files
from optpipe.core.errors import summary_line
from optpipe.core.memory import release_free_heap
from optpipe.infra.pass_base import BuildContext, Pass, PassResult
from optpipe.onnx.utils import EXTERNAL_DATA_ABOVE, load_onnx, non_standard_ops, onnx_bytes, save_onnx
from optpipe.runtime.runners import OrtRunner


@dataclass(frozen=True)
class SimplifyConfig:
    """Options of the simplify pass."""

    atol: float = 1e-4  # element-wise equivalence tolerance between input and simplified model
    rtol: float = 1e-3
    # Weights above this many bytes go to ``<file>.data`` beside the model (build's --external-data-above).
    external_data_above: int = EXTERNAL_DATA_ABOVE


def _slim_without_shape_inference(path: Path, weights: int) -> tuple[Any, str, str | None]:
    """onnxslim on a model over protobuf's limit: its graph alone, without shape inference; (model or None, why,
    failure). The model comes back with its weights, read from ``path``'s data file after the slim.

    Why not try the full slim first: onnxslim's shape inference copies the whole model, and when ORT's
    symbolic inference fails falls back to ``ModelProto.ByteSize()``, which protobuf refuses over 2 GiB
    ("Failed to serialize proto") only after serialising everything: the 2.4 GB scale model peaked at
    17.4 GB in this failed attempt, for a result the retry without shape inference had to make anyway.
    Why the graph alone (weights left in the data file, ``load_external_data=False``): onnxslim's graph IR
    and its constant folding copy every tensor they hold, and the folding's ONNX Runtime session copies the
    folded subgraph's tensors once more; with the weights in memory the 2.4 GB model peaked at 15.1 GB in
    this pass. The weights are only ever read by reference here (onnxslim's tensors load lazily); the
    same graph results (the folding that needs a weight's values would fail and leave it as it was, and the
    equivalence check on the golden inputs would still judge the result).
    """
    import onnxslim
    from onnx.external_data_helper import load_external_data_for_model

    why = (f"the weights ({weights / 1e9:.1f} GB) exceed protobuf's 2 GiB limit, which onnxslim's shape "
           "inference needs")
    try:
        slimmed = onnxslim.slim(load_onnx(path, load_external_data=False), no_shape_infer=True)
    except Exception as error:
        return None, why, f"onnxslim failed on this {weights / 1e9:.1f} GB model ({summary_line(error)})"
    release_free_heap()  # onnxslim's IR of the graph, before the weights come in
    load_external_data_for_model(slimmed, str(path.parent))
    return slimmed, why, None


class SimplifyOnnx(Pass):
    """ONNX -> ONNX with onnxslim; falls back to the input when the result is not equivalent."""

    name = "simplify"
    description = "simplify the graph with onnxslim, checked for equivalence and portable op domains"
    input_kind = ArtifactKind.ONNX
    output_kind = ArtifactKind.ONNX
    Config = SimplifyConfig
    uses = ("onnx", "onnxslim", "onnxruntime")
    cacheable = True

    def run(self, artifact: Artifact, ctx: BuildContext) -> PassResult:
        import onnxslim

        assert artifact.path is not None
        # onnxslim loads the model itself from the path: the pass holds no copy of the weights of its own
        # while onnxslim works, and onnxslim drops its loaded copy after the first optimisation round.
        before = len(load_onnx(artifact.path, load_external_data=False).graph.node)
        weights = onnx_bytes(artifact.path)
        over_limit = ""
        if weights > EXTERNAL_DATA_ABOVE:  # straight to the path that works over 2 GB (and holds fewer copies)
            slimmed, over_limit, failure = _slim_without_shape_inference(artifact.path, weights)
            if slimmed is None:  # keep the input, say why: never the build's failure
                return PassResult(artifact, modified=False, warnings=[f"simplify skipped: {failure}"],
                                  metrics={"nodes_before": before, "kept_input_because": failure})
        else:
            slimmed = onnxslim.slim(str(artifact.path))
        path = ctx.path("model.onnx")
        files = save_onnx(slimmed, path, external_above=self.config.external_data_above)
        metrics: dict[str, Any] = {"nodes_before": before, "nodes_after": len(slimmed.graph.node)}
        if over_limit:
            metrics["without_shape_inference"] = over_limit
        del slimmed
        problem = self._problem(artifact, path, ctx)
        if problem is not None:
            for file in files:
                file.unlink()
            metrics["kept_input_because"] = problem
            return PassResult(artifact, modified=False, metrics=metrics, warnings=[f"simplify skipped: {problem}"])
        result = artifact.derive(path=path, sha256=sha256_files(files), producer="simplify/onnxslim")
        return PassResult(result, modified=metrics["nodes_before"] != metrics["nodes_after"], metrics=metrics)

    def _problem(self, artifact: Artifact, path: Any, ctx: BuildContext) -> str | None:
        """Why the simplified model must not be used, or None when it is fine."""
        foreign = non_standard_ops(load_onnx(path, load_external_data=False))
        if foreign:
            return f"result uses non-standard ops {dict(foreign)}"
        if ctx.golden is None:
            return None
        assert artifact.path is not None
        # One session alive at a time: the input model's outputs first, then the simplified model's.
        before = OrtRunner(artifact.path, threads=ctx.threads, level="basic")
        expected_all = [before.infer(case.inputs) for case in ctx.golden.cases]
        before.close()
        after = OrtRunner(path, threads=ctx.threads, level="basic")
        for case, expected in zip(ctx.golden.cases, expected_all, strict=True):
            got = after.infer(case.inputs)
            for name, value in expected.items():
                if got[name].shape != value.shape or not np.allclose(
                    got[name], value, atol=self.config.atol, rtol=self.config.rtol
                ):
                    return f"output '{name}' changed at batch {case.batch}"
        return None
