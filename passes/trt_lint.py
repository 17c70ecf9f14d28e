"""Static "will TensorRT accept this ONNX?" check, run on the CPU before any engine build.

Why a pass: on a split build the TensorRT builder runs later, on another
machine. A model TensorRT's parser will refuse (an op it lacks, a
``com.microsoft`` op, uint8 or asymmetric QDQ, a dynamic axis without a
profile) must stop the build *here*, next to the stage that caused it, with
the node and the fix, instead of failing on the GPU box hours later. The
rules live in :mod:`optpipe.runtime.tensorrt.lint`; this pass only feeds it the
build's optimization profiles and turns its findings into a report entry.

Errors raise :class:`~optpipe.core.errors.UserInputError` (exit 2) listing every
problem; warnings go to the report and the build goes on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from optpipe.core.artifact import Artifact, ArtifactKind
from optpipe.core.errors import UserInputError
from optpipe.core.tensor_spec import DynamicDim, TensorSpec
from optpipe.infra.pass_base import BuildContext, Pass, PassResult


@dataclass(frozen=True)
class TrtLintConfig:
    """Options of the TensorRT lint pass."""

    # Treat warnings (ops missing from the support table, FP8/INT4 Q/DQ, int64
    # constants TensorRT clamps) as errors: for CI that wants a model to be
    # known-good on every GPU, not just likely to build.
    warnings_as_errors: bool = False


def lint_shape_profiles(input_specs: Sequence[TensorSpec], dynamic: Sequence[DynamicDim]) -> dict[str, Any]:
    """The shape profiles the engine will be built with, in the form ``lint_model`` accepts.

    Both keyings are given: per axis name (``batch``, ``seq``) and per input
    (full min/opt/max shapes resolved from the input specs, exactly as
    :func:`~optpipe.runtime.tensorrt.engine.build_engine` resolves them). So the lint
    accepts precisely what the builder will be given, even when the exporter
    named an axis differently from ``--dynamic``. When the specs cannot be
    resolved (a dynamic axis without bounds), only the axis names are given and
    the lint reports the uncovered axis with its fix.
    """
    from optpipe.runtime.tensorrt.shape_profiles import resolve_input_shapes

    shape_profiles: dict[str, Any] = {dim.axis_name: dim for dim in dynamic}
    try:
        shapes = resolve_input_shapes(input_specs, list(dynamic))
    except UserInputError:
        return shape_profiles
    shape_profiles.update(shapes)
    return shape_profiles


class TrtLintPass(Pass):
    """onnx -> onnx (unchanged): refuse models TensorRT is documented to reject."""

    name = "trt-lint"
    description = "check the ONNX against TensorRT's documented ONNX support (ops, QDQ style, profiles)"
    input_kind = ArtifactKind.ONNX
    output_kind = ArtifactKind.ONNX
    Config = TrtLintConfig

    def run(self, artifact: Artifact, ctx: BuildContext) -> PassResult:
        from optpipe.runtime.tensorrt.lint import format_problems, lint_model, load_support_table

        assert artifact.path is not None
        problems = lint_model(artifact.path, shape_profiles=lint_shape_profiles(ctx.input_specs, ctx.dynamic))
        blocking = [
            p for p in problems if p.severity == "error" or self.config.warnings_as_errors
        ]
        if blocking:
            count = len(blocking)
            raise UserInputError(
                f"TensorRT is expected to reject {artifact.path.name} ({artifact.precision}): "
                f"{count} problem{'s' if count != 1 else ''}; nothing was sent to the TensorRT builder.\n"
                + "\n".join(f"  {line}" for line in format_problems(problems).splitlines())
            )
        table = load_support_table()["source"]
        metrics: dict[str, Any] = {
            "support_table_tensorrt": table["tensorrt_version"],
            "errors": 0,
            "warnings": len(problems),
            "problems": [p.to_dict() for p in problems],
        }
        return PassResult(
            artifact, modified=False, metrics=metrics, warnings=[f"trt-lint: {p.format()}" for p in problems]
        )
