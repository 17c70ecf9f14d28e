"""Validate an engine against the PyTorch reference outputs (the parity gate).

Runs the engine on every golden case (the example batch, other batch sizes
when the batch is dynamic, held-out data when the model provides it) and
compares each output with :mod:`optpipe.compare.parity`: on all rows, and on the guard
rows and the test rows alone (the test rows were never seen by the accuracy
guard, so a variant that fails on them fails here). A failing gate does not raise:
the artifact is kept and the report says which output failed and why (exit 1).
An engine that cannot even run a case fails the gate with that error.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

from optpipe.compare.parity import validate_outputs
from optpipe.core.artifact import Artifact, ArtifactKind
from optpipe.core.errors import UserInputError
from optpipe.infra.declared_options import option
from optpipe.infra.pass_base import BuildContext, Pass, PassResult


@dataclass(frozen=True)
class ValidateConfig:
    """Options of the validate pass."""

    tolerances: dict[str, dict[str, float]] = option(
        help="Per-output overrides of the precision's default tolerance, e.g. "
        '{"logits": {"min_cosine": 0.995}, "*": {"atol": 1e-3}}.', default_factory=dict, flags=("tolerances",))
    output_kinds: dict[str, str] = option(
        help='What each output means ({output or "*": kind}, --output-kind): the gates that fit it; others inferred.',
        default_factory=dict, flags=("output_kinds",))


class ValidatePass(Pass):
    """engine -> engine: runs the golden cases and records parity per output."""

    name = "validate"
    description = "compare the engine's outputs with PyTorch on the golden inputs (per-output parity gate)"
    input_kind = ArtifactKind.ENGINE
    output_kind = ArtifactKind.ENGINE
    Config = ValidateConfig

    @classmethod
    def code_modules(cls) -> tuple[ModuleType, ...]:
        """The verdict's code (part of a reused validation's key): a changed gate never reuses an old verdict."""
        from optpipe.compare import golden, output_kinds, parity

        return (parity, output_kinds, golden)

    def requires(self, artifact: Artifact, ctx: BuildContext) -> None:
        if ctx.golden is None or not ctx.golden.cases:
            raise UserInputError("validation needs golden data (reference inputs and outputs)")
        unknown = set(self.config.tolerances) - set(ctx.output_names) - {"*"}
        if unknown:
            raise UserInputError(
                f"tolerance given for unknown output(s) {', '.join(sorted(unknown))}; "
                f"the outputs are {', '.join(ctx.output_names)}"
            )

    def run(self, artifact: Artifact, ctx: BuildContext) -> PassResult:
        runner = ctx.target.runner(artifact, ctx.threads)
        try:
            parity = validate_outputs(runner, ctx, artifact.precision, self.config.tolerances,
                                      self.config.output_kinds)
        finally:
            close = getattr(runner, "close", None)
            if callable(close):
                close()  # a GPU runner (TensorRT) frees its context and engine now
        return PassResult(artifact, modified=False, metrics={"parity": parity}, warnings=list(parity["warnings"]))
