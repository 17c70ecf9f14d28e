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

from optpipe.compare import onnx_outputs
from optpipe.core.artifact import Artifact, ArtifactKind, sha256_files
from optpipe.core.errors import summary_line
from optpipe.core.memory import release_free_heap
from optpipe.infra.pass_base import BuildContext, Pass, PassResult
from optpipe.onnx.utils import (
    EXTERNAL_DATA_ABOVE,
    adopt_data_file,
    holds_external_references,
    load_onnx,
    non_standard_ops,
    onnx_bytes,
    onnx_files,
    save_onnx,
)
from optpipe.onnx.weights_aside import put_back, set_aside, values_readable
from optpipe.runtime.runners import OrtRunner


@dataclass(frozen=True)
class SimplifyConfig:
    """Options of the simplify pass."""

    atol: float = 1e-4  # element-wise equivalence tolerance between input and simplified model
    rtol: float = 1e-3
    # Weights above this many bytes go to ``<file>.data`` beside the model (build's --external-data-above).
    external_data_above: int = EXTERNAL_DATA_ABOVE


def _slim(path: Path, over_limit: bool) -> tuple[Any, int]:
    """onnxslim on ``path``'s graph with its large weights set aside (:mod:`optpipe.onnx.weights_aside`),
    the weights put back in the result, and the input's node count; over protobuf's limit without onnxslim's
    shape inference.

    Why the weights aside: onnxslim's shape inference serialises the whole model and parses it back, and
    its graph IR and constant folding copy the tensors again: BERT-base (0.42 GB) peaked at 3.9 GB here,
    the build's highest point, and the 2.4 GB scale model at 15.1 GB. It needs their shapes, not their
    values; a folding that did read one would fail (the placeholder is no file) and leave it unfolded, and
    the equivalence check on the golden inputs judges the result either way. The files written are the
    ones slimming the whole model wrote (tests/passes/test_simplify_engine_validate.py).
    Why no shape inference over the limit, and not the full slim first: it falls back to
    ``ModelProto.ByteSize()``, which protobuf refuses over 2 GiB ("Failed to serialize proto"), only after
    serialising everything (17.4 GB for the 2.4 GB model, for a result the retry had to make anyway); the
    constant folding and fusions do not need the inferred shapes.
    """
    import onnxslim

    model = load_onnx(path, load_external_data=False)
    nodes_before = len(model.graph.node)
    aside = set_aside(model, path.parent)
    release_free_heap()  # the weights' first copy, read with the model
    with values_readable(aside):
        slimmed = onnxslim.slim(model, no_shape_infer=True) if over_limit else onnxslim.slim(model)
    del model
    release_free_heap()  # onnxslim's copies of the graph, before the weights come back
    put_back(slimmed, aside, load_external=len(onnx_files(path)) == 1)  # external weights stay in their file
    return slimmed, nodes_before


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
        assert artifact.path is not None
        weights = onnx_bytes(artifact.path)
        over_limit = ""
        if weights > EXTERNAL_DATA_ABOVE:  # without shape inference (which fails over 2 GB) and never fail the build
            over_limit = (f"the weights ({weights / 1e9:.1f} GB) exceed protobuf's 2 GiB limit, which onnxslim's "
                          "shape inference needs")
            try:
                slimmed, before = _slim(artifact.path, over_limit=True)
            except Exception as error:  # keep the input, say why: never the build's failure
                failure = f"onnxslim failed on this {weights / 1e9:.1f} GB model ({summary_line(error)})"
                before = len(load_onnx(artifact.path, load_external_data=False).graph.node)
                return PassResult(artifact, modified=False, warnings=[f"simplify skipped: {failure}"],
                                  metrics={"nodes_before": before, "kept_input_because": failure})
        else:
            slimmed, before = _slim(artifact.path, over_limit=False)
        path = ctx.path("model.onnx")
        if holds_external_references(slimmed) and not adopt_data_file(slimmed, artifact.path.parent, path):
            from onnx.external_data_helper import load_external_data_for_model

            load_external_data_for_model(slimmed, str(artifact.path.parent))
        files = save_onnx(slimmed, path, external_above=self.config.external_data_above)
        metrics: dict[str, Any] = {"nodes_before": before, "nodes_after": len(slimmed.graph.node)}
        if over_limit:
            metrics["without_shape_inference"] = over_limit
        foreign = non_standard_ops(slimmed)
        del slimmed
        # The model lives in reference cycles (onnxslim's), its pages in the heap until trimmed: freed now,
        # before the equivalence check's sessions, not after them (BERT-base: 0.85 GB under those sessions).
        release_free_heap()
        problem = (f"result uses non-standard ops {dict(foreign)}" if foreign
                   else self._problem(artifact, path, ctx))
        if problem is not None:
            for file in files:
                file.unlink()
            metrics["kept_input_because"] = problem
            return PassResult(artifact, modified=False, metrics=metrics, warnings=[f"simplify skipped: {problem}"])
        result = artifact.derive(path=path, sha256=sha256_files(files), producer="simplify/onnxslim")
        return PassResult(result, modified=metrics["nodes_before"] != metrics["nodes_after"], metrics=metrics)

    def _problem(self, artifact: Artifact, path: Any, ctx: BuildContext) -> str | None:
        """Why the simplified model (portable ONNX) must not be used: it computes other values than its input."""
        if ctx.golden is None:
            return None
        assert artifact.path is not None
        # The input's outputs as the export pass computed them on the same file, else (a cached export, a
        # build from an ONNX file) computed here. One session alive at a time: the input's, then the result's.
        expected_all = onnx_outputs.recall(ctx.shared, artifact.sha256, ctx.threads)
        if expected_all is None:
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
