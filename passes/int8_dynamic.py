"""Dynamic INT8 for the ``cpu`` target (``--precision int8-dynamic``), behind the INT8 accuracy guard.

ONNX Runtime's ``quantize_dynamic`` (see :mod:`optpipe.precision.dynamic_quantize`):
int8 per-channel weights, activations quantized at run time, no calibration
data. It goes through the same accuracy gate (the ``int8-dynamic`` tolerances,
the same as ``int8``'s, on the golden data) and the same guard
(:func:`~optpipe.precision.guard.localize.guarded_quantize`): when the gate fails the
worst nodes stay FP32 and the model is rebuilt, up to ``--guard-max-keep``.
TensorRT cannot run ORT's integer ops, so the ``tensorrt`` target refuses it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any

from optpipe.core.artifact import Artifact, ArtifactKind, sha256_files
from optpipe.infra.pass_base import BuildContext, Pass, PassResult
from optpipe.onnx.utils import EXTERNAL_DATA_ABOVE, onnx_files
from optpipe.precision import pass_support

PRECISION = "int8-dynamic"
#: The fewest nodes the dynamic INT8 guard may keep, whatever ``--guard-max-keep``'s fraction gives. Why: a
#: node kept in FP32 here costs one FP32 MatMul, not a broken Q/DQ chain, and a 6-layer transformer has 36
#: quantizable MatMuls, so the default 10% (4 nodes) gave up before an embedding's min_row_cosine of 0.99.
MIN_KEEP = 12


@dataclass(frozen=True)
class Int8DynamicConfig(pass_support.GuardedConfig):
    """Options of the dynamic INT8 pass (``optpipe build --precision int8-dynamic``).

    The guard's fields come from :class:`~optpipe.precision.pass_support.GuardedConfig`;
    ``max_keep_fraction`` counts the quantizable (MatMul/Gemm) nodes.
    """

    # 7-bit int8 weights for ORT's U8S8 kernels; None = decide from this CPU (no VNNI -> 8-bit uint8 weights,
    # ORT's U8U8 kernel: optpipe.precision.dynamic_quantize.weight_recipe).
    reduce_range: bool | None = None
    # ONNX node names to keep in FP32 from the start.
    exclude_nodes: tuple[str, ...] = ()
    # Weights above this many bytes go to ``<file>.data`` beside the model (build's --external-data-above).
    external_data_above: int = EXTERNAL_DATA_ABOVE
    # The guard tunes its rows to similarity bars this fraction of the way from the user's bar to 1
    # (optpipe.precision.guard.margin); the verdict on the test rows keeps the user's bars.
    guard_margin: float = 0.5


class Int8DynamicPass(Pass):
    """ONNX -> dynamically quantized INT8 ONNX (``int8-dynamic/model.onnx``), accuracy-guarded."""

    name = PRECISION
    description = "dynamic INT8 (ORT quantize_dynamic, no calibration); keep nodes in FP32 if the gate fails"
    input_kind = ArtifactKind.ONNX
    output_kind = ArtifactKind.ONNX
    Config = Int8DynamicConfig
    uses = ("onnx", "onnxruntime")
    # Deterministic given its input, config and cache_facts (the golden inputs by content, the CPU's
    # reduce_range choice): the guard's verdicts are a function of those, so a rebuild may reuse them.
    cacheable = True

    @classmethod
    def code_modules(cls) -> tuple[ModuleType, ...]:
        """The quantizer, guard and gate helpers that decide the output (part of the cache key)."""
        from optpipe.precision import dynamic_quantize
        from optpipe.precision.guard import dynamic_sensitivity, margin

        return (*pass_support.guard_code_modules(), dynamic_quantize, dynamic_sensitivity, margin)

    def cache_facts(self, ctx: BuildContext) -> dict[str, Any]:
        """What the output depends on outside the config: the golden inputs and this CPU's weight recipe."""
        from optpipe.precision.dynamic_quantize import weight_recipe

        facts = pass_support.precision_facts(ctx, pass_support.golden_inputs(ctx), "golden")
        facts["reduce_range"], facts["weight_type"] = weight_recipe(self.config.reduce_range)
        return facts

    def run(self, artifact: Artifact, ctx: BuildContext) -> PassResult:
        from pathlib import Path

        from optpipe.precision.dynamic_quantize import quantizable_nodes, quantize_int8_dynamic, weight_recipe
        from optpipe.precision.guard.dynamic_sensitivity import dynamic_output_gains
        from optpipe.precision.guard.gate import gate_runtime_note
        from optpipe.precision.guard.margin import guard_tolerances, margin_note

        assert artifact.path is not None
        config = self.config
        src = Path(artifact.path)
        # The variant's own folder: int8-dynamic+fused (on the fused graph) must not overwrite int8-dynamic.
        variant = artifact.precision if artifact.precision.startswith(PRECISION) else PRECISION
        dst = ctx.path(variant, "model.onnx")
        # The per-layer analysis needs inputs only: the golden cases (no calibration data here).
        samples = pass_support.golden_inputs(ctx)

        def quantize(keep: list[str]) -> Any:
            return quantize_int8_dynamic(src, dst, exclude_nodes=keep, reduce_range=config.reduce_range,
                                         external_above=config.external_data_above)

        # The guard aims above the user's bars on its own rows (issue 19: rows it never saw sit lower).
        aimed = replace(config, tolerances=guard_tolerances(PRECISION, ctx.output_names, config.tolerances,
                                                            config.guard_margin))
        result, gate_log = pass_support.run_guard(
            ctx,
            src,
            dst,
            samples,
            aimed,
            gate_name=PRECISION,
            level="all",
            guard=config.guard and bool(samples),
            int8_options={"exclude_nodes": list(config.exclude_nodes)},
            quantize=quantize,
            eligible=quantizable_nodes,  # of the FP32 model the guard loaded: keeping anything else changes nothing
            min_keep=MIN_KEEP,
            output_gains=dynamic_output_gains,  # no Q/DQ to bypass: rank by the output error of an emulation
        )
        first = result.results[0] if result.results else None
        warnings: list[str] = list(first.warnings) if first is not None else []
        metrics: dict[str, Any] = {"style": "cpu", "method": "dynamic", "gate_runtime": gate_runtime_note("cpu")}
        metrics["reduce_range"], metrics["weight_type"] = weight_recipe(config.reduce_range)
        if result.path is None:  # nothing quantizable: say so, never ship FP32 labelled int8-dynamic
            pass_support.skip_nothing_quantizable(PRECISION, result, metrics)

        advice = "; raise the limit with --guard-max-keep or use fp32"
        if config.guard_margin:  # the gate above is the guard's stricter aim, not the verdict's bar
            advice = (f" (the guard aims {config.guard_margin:g} of the way from each similarity bar to 1; the "
                      f"verdict on the test rows uses the bars as given){advice}")
        guard_metrics, guard_warnings = pass_support.guard_report(
            ctx, src, result, gate_log, samples, config, precision=PRECISION, advice=advice
        )
        status = "quantized" if result.passed else "gate_failed"
        metrics.update(status=status, **pass_support.quantized_counts(result), **guard_metrics)
        metrics["guard"]["aimed_at"] = margin_note(PRECISION, ctx.output_names, config.tolerances, config.guard_margin)
        metrics["guard"]["margin"] = config.guard_margin
        warnings.extend(guard_warnings)
        out = artifact.derive(path=dst, sha256=sha256_files(onnx_files(dst)), precision=variant,
                              producer="int8/dynamic")
        return PassResult(out, modified=True, metrics=metrics, warnings=warnings)
