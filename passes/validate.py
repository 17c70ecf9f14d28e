"""Validate an engine against the PyTorch reference outputs (the parity gate).

Runs the engine on every golden case (the example batch, other batch sizes
when the batch is dynamic, held-out data when the model provides it) and
compares each output with :mod:`optpipe.parity`. A failing gate does not raise:
the artifact is kept and the report says which output failed and why (exit 1).
An engine that cannot even run a case fails the gate with that error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from optpipe.artifact import Artifact, ArtifactKind
from optpipe.errors import UserInputError, first_line
from optpipe.output_kinds import row_keys
from optpipe.parity import judge_output, tolerance_for
from optpipe.pass_base import BuildContext, Pass, PassResult


@dataclass(frozen=True)
class ValidateConfig:
    """Options of the validate pass."""

    # Per-output overrides of the precision's default tolerance, e.g.
    # {"logits": {"min_cosine": 0.995}, "*": {"atol": 1e-3}}.
    tolerances: dict[str, dict[str, float]] = field(default_factory=dict)


def validate_outputs(
    runner: Any, ctx: BuildContext, precision: str, tolerances: dict[str, dict[str, float]]
) -> dict[str, Any]:
    """Parity record of one engine: per-output statistics, verdict and failures."""
    assert ctx.golden is not None
    references: dict[str, list[np.ndarray]] = {name: [] for name in ctx.output_names}
    results: dict[str, list[np.ndarray]] = {name: [] for name in ctx.output_names}
    failures: list[str] = []
    warnings: list[str] = []
    keys: dict[str, list[list[bytes]]] = {name: [] for name in ctx.output_names}
    from optpipe.progress import Progress

    progress = Progress("validate", len(ctx.golden.cases))
    for index, case in enumerate(ctx.golden.cases):
        progress.update(index)
        try:
            got = runner.infer(case.inputs)
        except Exception as error:
            first = first_line(error, with_type=False)
            failures.append(f"inference failed on case '{case.name}' (batch {case.batch}): {first}")
            continue
        for name in ctx.output_names:
            if got[name].shape != case.outputs[name].shape:
                failures.append(
                    f"output '{name}' shape {tuple(got[name].shape)} != reference "
                    f"{tuple(case.outputs[name].shape)} on case '{case.name}'"
                )
                continue
            references[name].append(case.outputs[name])
            results[name].append(got[name])
            keys[name].append(row_keys(case.inputs))
    progress.close()
    outputs = {}
    for name in ctx.output_names:
        if not references[name]:
            continue
        record = judge_output(name, references[name], results[name], tolerance_for(precision, name, tolerances),
                              ctx.options.get("output_kinds") or {}, keys[name])
        outputs[name] = record
        failures.extend(f"output '{name}': {failure}" for failure in record["failures"])
        warnings.extend(f"output '{name}': {warning}" for warning in record["warnings"])
    return {
        "cases": [{"name": c.name, "batch": c.batch} for c in ctx.golden.cases],
        "outputs": outputs,
        "passed": not failures,
        "failures": failures,
        "warnings": warnings,
    }


class ValidatePass(Pass):
    """engine -> engine: runs the golden cases and records parity per output."""

    name = "validate"
    description = "compare the engine's outputs with PyTorch on the golden inputs (per-output parity gate)"
    input_kind = ArtifactKind.ENGINE
    output_kind = ArtifactKind.ENGINE
    Config = ValidateConfig

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
            parity = validate_outputs(runner, ctx, artifact.precision, self.config.tolerances)
        finally:
            close = getattr(runner, "close", None)
            if callable(close):
                close()  # a GPU runner (TensorRT) frees its context and engine now
        return PassResult(artifact, modified=False, metrics={"parity": parity}, warnings=list(parity["warnings"]))
