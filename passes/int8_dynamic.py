"""Dynamic INT8 for the ``cpu`` target (``--precision int8-dynamic``), behind the INT8 accuracy guard.

ONNX Runtime's ``quantize_dynamic`` (see :mod:`optpipe.precision.dynamic_quantize`):
int8 per-channel weights, activations quantized at run time, no calibration
data. It goes through the same accuracy gate (the ``int8-dynamic`` tolerances,
the same as ``int8``'s, on the golden data) and the same guard
(:func:`~optpipe.precision.guard.localize.guarded_quantize`): when the gate fails the
worst nodes are kept out of it and the model is rebuilt, up to ``--guard-max-keep``.
A kept MatMul need not be FP32 (``kept_as``, :mod:`optpipe.precision.kept_weights`): its error
came from the per-tensor activation quantization, so it may keep 8-bit weights with an activation
that is not quantized per tensor, at a quarter of FP32's bytes; when no search in that form reaches
the gate within the node limit, the guard searches again with FP32 kept nodes.
TensorRT cannot run ORT's integer ops, so the ``tensorrt`` target refuses it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

from optpipe.core.artifact import Artifact, ArtifactKind, sha256_files
from optpipe.infra.declared_options import option
from optpipe.infra.pass_base import BuildContext, Pass, PassResult
from optpipe.onnx.utils import EXTERNAL_DATA_ABOVE, onnx_files
from optpipe.precision import pass_support
from optpipe.precision.names import DYNAMIC_KEPT_AS

PRECISION = "int8-dynamic"
#: The fewest nodes the dynamic INT8 guard may keep, whatever ``--guard-max-keep``'s fraction gives. Why: a
#: node kept in FP32 here costs one FP32 MatMul, not a broken Q/DQ chain, and a 6-layer transformer has 36
#: quantizable MatMuls, so the default 10% (4 nodes) gave up before an embedding's min_row_cosine of 0.99.
MIN_KEEP = 12
#: ONNX Runtime's dynamic quantizer rewrites every Gemm, kept or not, into a MatMul of this suffix (+ Add).
GEMM_SUFFIX = "_MatMul"
#: What the guard's warning calls a kept MatMul in each ``kept_as`` form other than FP32.
KEPT_LABELS = {"int8": "8-bit weight blocks (MatMulNBits)", "dequantize": "uint8 weights, FP32 activation"}


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
    kept_as: str = option("dequantize", help="What a MatMul the accuracy guard keeps becomes: fp32; int8 (8-bit "
                          "MatMulNBits blocks of 128, activation quantized per block at run time); dequantize "
                          "(per-channel uint8 weights, DequantizeLinear -> FP32 MatMul: the activation stays FP32). "
                          "Both 8-bit forms cost about 1 byte a weight in the file against FP32's 4.",
                          choices=DYNAMIC_KEPT_AS)


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
        from optpipe.precision import dynamic_quantize, kept_weights, weight_only_quantize
        from optpipe.precision.guard import dynamic_sensitivity, margin

        return (*pass_support.guard_code_modules(), dynamic_quantize, dynamic_sensitivity, margin, kept_weights,
                weight_only_quantize)

    def cache_facts(self, ctx: BuildContext) -> dict[str, Any]:
        """What the output depends on outside the config: the golden inputs and this CPU's weight recipe."""
        from optpipe.precision.dynamic_quantize import weight_recipe

        facts = pass_support.precision_facts(ctx, pass_support.golden_inputs(ctx), "golden")
        facts["reduce_range"], facts["weight_type"] = weight_recipe(self.config.reduce_range)
        return facts

    def run(self, artifact: Artifact, ctx: BuildContext) -> PassResult:
        from optpipe.precision.dynamic_quantize import weight_recipe
        from optpipe.precision.guard.gate import gate_runtime_note
        from optpipe.precision.guard.localize import TIME_SPENT
        from optpipe.precision.guard.margin import margin_note

        assert artifact.path is not None
        config = self.config
        src = Path(artifact.path)
        # The variant's own folder: int8-dynamic+fused (on the fused graph) must not overwrite int8-dynamic.
        variant = artifact.precision if artifact.precision.startswith(PRECISION) else PRECISION
        dst = ctx.path(variant, "model.onnx")
        # The per-layer analysis needs inputs only: the golden cases (no calibration data here).
        samples = pass_support.golden_inputs(ctx)
        metrics: dict[str, Any] = {"style": "cpu", "method": "dynamic", "gate_runtime": gate_runtime_note("cpu"),
                                   "kept_as": config.kept_as}  # fmt: skip
        guarded = self._guarded(ctx, src, dst, samples, config.kept_as)
        result = guarded[0]
        if (config.kept_as != "fp32" and not result.passed and (result.kept_nodes or result.path is None)
                and result.stopped != TIME_SPENT):  # fmt: skip
            # An 8-bit form did not let the guard reach the gate within its node limit (an input channel whose
            # weight row 8 bits round away, e.g.): the search again with kept nodes in FP32, which repair what they
            # are kept for. Not when the time budget stopped it: the form was not what failed, and a second
            # search would cost a second budget.
            ctx.log(f"     {PRECISION}: kept nodes as {config.kept_as} did not reach the gate; searching again with "
                    "kept nodes in FP32")
            metrics["kept_as_fallback"] = {"tried": config.kept_as, "kept": list(result.kept_nodes),
                                           "history": [{"kept": list(k), "passed": p} for k, p in result.history]}
            metrics["kept_as"] = "fp32"
            guarded = self._guarded(ctx, src, dst, samples, "fp32")
        metrics["reduce_range"], metrics["weight_type"] = weight_recipe(config.reduce_range)
        advice = "; raise the limit with --guard-max-keep or use fp32"
        if config.guard_margin:  # the gate above is the guard's stricter aim, not the verdict's bar
            advice = (f" (the guard aims {config.guard_margin:g} of the way from each similarity bar to 1; the "
                      f"verdict on the test rows uses the bars as given){advice}")
        forms = self._kept_forms(guarded[0].path)
        # Nothing quantizable raises VariantSkipped there: FP32 is never shipped labelled int8-dynamic.
        warnings = pass_support.guarded_outcome(
            ctx, src, guarded, samples, config, metrics, precision=PRECISION, advice=advice,
            kept_as=lambda row: KEPT_LABELS.get(forms.get(row["node"]) or forms.get(f"{row['node']}{GEMM_SUFFIX}", ""),
                                                "FP32"),
        )  # fmt: skip
        metrics["kept_forms"] = forms
        metrics["guard"]["aimed_at"] = margin_note(PRECISION, ctx.output_names, config.tolerances, config.guard_margin)
        metrics["guard"]["margin"] = config.guard_margin
        out = artifact.derive(path=dst, sha256=sha256_files(onnx_files(dst)), precision=variant,
                              producer="int8/dynamic")
        return PassResult(out, modified=True, metrics=metrics, warnings=warnings)

    def _guarded(self, ctx: BuildContext, src: Path, dst: Path, samples: pass_support.Samples,
                 kept_as: str) -> tuple[Any, list[dict[str, Any]]]:
        """The guard's search behind the gate, each kept MatMul (not the user's excluded ones) in ``kept_as``'s form:
        :func:`~optpipe.precision.pass_support.run_guard`'s result and gate log."""
        from optpipe.precision.dynamic_quantize import quantizable_nodes, quantize_int8_dynamic
        from optpipe.precision.guard.dynamic_sensitivity import dynamic_output_gains
        from optpipe.precision.guard.margin import guard_tolerances
        from optpipe.precision.kept_weights import keep_as_dequantized, keep_as_eight_bit

        config = self.config

        def quantize(keep: list[str]) -> Any:
            result = quantize_int8_dynamic(src, dst, exclude_nodes=keep, reduce_range=config.reduce_range,
                                           external_above=config.external_data_above)
            kept = [n for n in keep if n not in set(config.exclude_nodes)] if kept_as != "fp32" else []
            if kept and result.path is not None:  # a kept Gemm is ORT's "<name>_MatMul" (+ Add) by now
                rewrite = keep_as_eight_bit if kept_as == "int8" else keep_as_dequantized
                rewrite(result.path, [*kept, *(f"{n}{GEMM_SUFFIX}" for n in kept)],
                        external_above=config.external_data_above)
            return result

        # The guard aims above the user's bars on its own rows (issue 19: rows it never saw sit lower).
        aimed = replace(config, tolerances=guard_tolerances(PRECISION, ctx.output_names, config.tolerances,
                                                            config.guard_margin))
        return pass_support.run_guard(
            ctx, src, dst, samples, aimed, gate_name=PRECISION, level="all", guard=config.guard and bool(samples),
            int8_options={"exclude_nodes": list(config.exclude_nodes)}, quantize=quantize,
            eligible=quantizable_nodes,  # of the FP32 model the guard loaded: keeping anything else changes nothing
            min_keep=MIN_KEEP,
            output_gains=dynamic_output_gains,  # no Q/DQ to bypass: rank by the output error of an emulation
        )  # fmt: skip

    def _kept_forms(self, path: Path | None) -> dict[str, str]:
        """Kept node -> the form it has in the shipped model, read from the model itself (a kept Gemm under ORT's
        name ``<gemm>_MatMul``); nodes still FP32 are left out."""
        if path is None:
            return {}
        from optpipe.precision.kept_weights import kept_forms

        return kept_forms(path)
