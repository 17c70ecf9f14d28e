"""Weight-only INT4 for the ``cpu`` target (``--precision int4-weight``), behind the accuracy guard.

ONNX Runtime's MatMulNBits quantizer (see :mod:`optpipe.precision.weight_only_quantize`): the
constant MatMul/Gemm weights become 4-bit blocks, activations stay float, no calibration data. It
goes through the same accuracy gate as the other lossy precisions (the ``int4-weight`` tolerances,
the same as INT8's, per output kind, on the golden data). Its guard
(:mod:`~optpipe.precision.guard.weight_only_guard`) ranks MatMuls by what their 4-bit weights do to the output
(one switchable session, not a rebuild per probe), keeps the most output error per byte in 8-bit (``kept_as``
int8, the default) or FP32 within ``max_size_fraction`` of the FP32 model's bytes, and lets the gate on the guard
rows judge the model it plans; the test rows judge the variant.
TensorRT cannot run ``com.microsoft`` ops, so the ``tensorrt`` target refuses it and says what it would need.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from optpipe.core.artifact import Artifact, ArtifactKind, sha256_files
from optpipe.core.errors import UserInputError
from optpipe.infra.declared_options import option
from optpipe.infra.pass_base import BuildContext, Pass, PassResult
from optpipe.onnx.utils import EXTERNAL_DATA_ABOVE, onnx_files
from optpipe.precision import pass_support
from optpipe.precision.int4_options import ALGORITHMS, KEPT_AS, Int4Options

if TYPE_CHECKING:
    from optpipe.precision.guard.localize import GuardResult

PRECISION = "int4-weight"
#: The fewest nodes the guard may keep with ``kept_as`` fp32, as for dynamic INT8 (a kept node costs one FP32 MatMul).
MIN_KEEP = 12


@dataclass(frozen=True)
class Int4WeightConfig(pass_support.GuardedConfig):
    """Options of the weight-only INT4 pass (``[passes.int4-weight]`` in optpipe.toml, ``build(pass_options=)``).

    The guard's fields come from :class:`~optpipe.precision.pass_support.GuardedConfig`;
    ``max_keep_fraction`` counts the quantizable (MatMul/Gemm) nodes.
    """

    # 32, not ORT's 128: measured on the BERT-base scale model (README, "Weight-only INT4"), embedding cosine
    # 0.985 vs 0.976 at 1.11x vs 1.15x fp32's speed, for 0.64 bytes per weight vs 0.53 (scales, zero points).
    block_size: int = option(32, help="Weights per scale (and zero point) along K: one of 16, 32, 64, 128; "
                             "smaller is more accurate and a little larger.")
    symmetric: bool = option(False, help="Symmetric blocks (no zero points): smaller, usually less accurate.")
    accuracy_level: int = option(4, help="MatMulNBits accuracy_level: 4 quantizes activations to int8 per block "
                                 "at run time (fastest on CPU), 1 computes in FP32, 0 leaves it to the kernel.")
    embeddings: bool = option(False, help="Also quantize embedding tables (a Gather of a constant matrix) to 4-bit "
                              "blocks along the hidden axis; ONNX Runtime then raises the model's opset to 21.")
    # True: bert_wide (2.4 GB) fits 0.6 GB only with its 188 MB table as uint8 (47 MB); the per-table scale is what
    # int8-dynamic gives a Gather (README, "Weight-only INT4").
    embeddings_int8: bool = option(True, help="Also store embedding tables (a Gather of a constant matrix) as uint8, "
                                   "one scale and zero point per table (DequantizeLinear after the Gather); the "
                                   "opset stays.")
    # int8 by default: a kept MatMul then costs 1.04 bytes per weight, not 4, so the guard can keep what the output
    # needs (bert_wide: 80 of 120 MatMuls) within max_size_fraction; fp32 keeps the node limit --guard-max-keep.
    kept_as: str = option("int8", help="What a MatMul the accuracy guard keeps becomes: int8 (8-bit MatMulNBits "
                          "blocks of 128, about 1.04 bytes per weight against FP32's 4), or fp32.", choices=KEPT_AS)
    max_size_fraction: float = option(0.25, help="The largest artifact the accuracy guard may make, as a fraction of "
                                      "the FP32 model's bytes: it keeps MatMuls (as kept_as) by output gain per "
                                      "byte within it; 1.0 lifts the limit.")
    algorithm: str = option("default", help="default: round each block to nearest; hqq: Half-Quadratic "
                            "Quantization fits each block's scale and zero point (no data; MatMul weights only, "
                            "asymmetric, the kernel's default accuracy level).", choices=ALGORITHMS)
    # The guard tunes its rows to similarity bars this fraction of the way from the user's bar to 1
    # (optpipe.precision.guard.margin, as int8-dynamic); the verdict on the test rows keeps the user's bars.
    guard_margin: float = 0.5
    # ONNX node names to keep in FP32 from the start.
    exclude_nodes: tuple[str, ...] = ()
    # Weights above this many bytes go to ``<file>.data`` beside the model (build's --external-data-above).
    external_data_above: int = EXTERNAL_DATA_ABOVE

    def __post_init__(self) -> None:
        """Refuse a block size or accuracy level ONNX Runtime's CPU kernels do not take, before any export."""
        self.int4_options().check()
        if not 0 < self.max_size_fraction <= 1:
            raise UserInputError(f"int4-weight max_size_fraction must be in (0, 1], got {self.max_size_fraction}")

    def int4_options(self) -> Int4Options:
        """The quantizer's options."""
        return Int4Options(block_size=self.block_size, symmetric=self.symmetric, accuracy_level=self.accuracy_level,
                           embeddings=self.embeddings, algorithm=self.algorithm,
                           embeddings_int8=self.embeddings_int8 and not self.embeddings,  # 4-bit tables asked
                           kept_as=self.kept_as)


class Int4WeightPass(Pass):
    """ONNX -> weight-only INT4 ONNX with MatMulNBits (``int4-weight/model.onnx``), accuracy-guarded."""

    name = PRECISION
    description = "weight-only INT4 (ORT MatMulNBits, no calibration); keep MatMuls 8-bit (kept_as) if the gate fails"
    input_kind = ArtifactKind.ONNX
    output_kind = ArtifactKind.ONNX
    Config = Int4WeightConfig
    uses = ("onnx", "onnxruntime")
    # Deterministic given its input, config and the golden inputs: the guard's verdicts are a function of those.
    cacheable = True

    @classmethod
    def code_modules(cls) -> tuple[ModuleType, ...]:
        """The quantizer, guard and gate helpers that decide the output (part of the cache key)."""
        from optpipe.precision import weight_only_quantize
        from optpipe.precision.guard import margin, weight_only_guard, weight_only_probe

        return (*pass_support.guard_code_modules(), weight_only_quantize, weight_only_guard, weight_only_probe, margin)

    def cache_facts(self, ctx: BuildContext) -> dict[str, Any]:
        """What the output depends on outside the config: the golden inputs the guard ranks nodes on."""
        return pass_support.precision_facts(ctx, pass_support.golden_inputs(ctx), "golden")

    def run(self, artifact: Artifact, ctx: BuildContext) -> PassResult:
        from optpipe.precision.guard.gate import gate_runtime_note
        from optpipe.precision.weight_only_quantize import quantize_int4_weight

        if str(getattr(ctx.target, "qdq_style", "cpu")) != "cpu":  # the builder refuses first; a direct run too
            raise UserInputError(tensorrt_refusal(getattr(ctx.target, "name", ctx.target)))
        assert artifact.path is not None
        config = self.config
        src = Path(artifact.path)
        dst = ctx.path(PRECISION, "model.onnx")
        samples = pass_support.golden_inputs(ctx)  # the per-layer analysis needs inputs only

        def quantize(keep: list[str]) -> Any:
            # The user's exclude_nodes stay FP32; what the guard keeps becomes what kept_as says.
            user = set(config.exclude_nodes)
            eight = [n for n in keep if n not in user] if config.kept_as == "int8" else []
            return quantize_int4_weight(src, dst, exclude_nodes=[n for n in keep if n not in set(eight)],
                                        options=config.int4_options(), external_above=config.external_data_above,
                                        eight_bit_nodes=eight)  # fmt: skip

        if config.guard and samples:
            guarded = self._guarded(ctx, src, dst, samples, quantize)
        else:  # no guard (or no golden rows to rank on): one build behind the gate
            guarded = pass_support.run_guard(ctx, src, dst, samples, config, gate_name=PRECISION, level="all",
                                             guard=False, quantize=quantize,
                                             int8_options={"exclude_nodes": list(config.exclude_nodes)})  # fmt: skip
        metrics: dict[str, Any] = {"style": "cpu", "method": "weight-only-int4", "block_size": config.block_size,
                                   "symmetric": config.symmetric, "accuracy_level": config.accuracy_level,
                                   "embeddings": config.embeddings, "algorithm": config.algorithm,
                                   "embeddings_int8": config.embeddings_int8, "kept_as": config.kept_as,
                                   "max_size_fraction": config.max_size_fraction, "guard_margin": config.guard_margin,
                                   "gate_runtime": gate_runtime_note("cpu")}  # fmt: skip
        # Nothing quantizable raises VariantSkipped there: FP32 is never shipped labelled int4-weight.
        warnings = pass_support.guarded_outcome(
            ctx, src, guarded, samples, config, metrics, precision=PRECISION,
            advice=self._advice(),
            kept_as=self._kept_as(),
        )  # fmt: skip
        out = artifact.derive(path=dst, sha256=sha256_files(onnx_files(dst)), precision=PRECISION,
                              producer="int4/weight-only")  # fmt: skip
        return PassResult(out, modified=True, metrics=metrics, warnings=warnings)

    def _guarded(self, ctx: BuildContext, src: Path, dst: Path, samples: pass_support.Samples,
                 quantize: Callable[[list[str]], Any]) -> tuple[GuardResult, list[dict[str, Any]]]:
        """The int4-weight guard (:mod:`optpipe.precision.guard.weight_only_guard`) behind the gate, and its log."""
        import onnx

        from optpipe.precision.guard.gate import make_gate
        from optpipe.precision.guard.margin import guard_tolerances
        from optpipe.precision.guard.weight_only_guard import (
            WeightOnlyBudget,
            max_nodes,
            weight_bytes,
            weight_only_guard,
        )
        from optpipe.precision.weight_only_quantize import quantizable_nodes, quantize_int4_weight

        config = self.config
        # The guard aims above the user's bars on its own rows (issue 19: rows it never saw sit lower).
        aimed = guard_tolerances(PRECISION, ctx.output_names, config.tolerances, config.guard_margin)
        gate, gate_log = make_gate(ctx, PRECISION, aimed, "all", dict(config.output_kinds))
        graph = onnx.load(str(src), load_external_data=False)  # names and shapes: the weights stay on disk
        candidates = [n for n in quantizable_nodes(graph) if n not in set(config.exclude_nodes)]
        del graph
        eight = config.kept_as == "int8"
        # kept_as int8: the size budget is the limit; fp32: also the node limit (--guard-max-keep), as before.
        limit = len(candidates) if eight else max(min(MIN_KEEP, len(candidates)),
                                                   max_nodes(config.max_keep_fraction, len(candidates)))
        budget = WeightOnlyBudget(int(config.max_size_fraction * weight_bytes(src)), limit, config.guard_seconds)

        def kept_model(path: Path) -> Path | None:
            if not eight:
                return None
            quantize_int4_weight(src, path, exclude_nodes=config.exclude_nodes, options=config.int4_options(),
                                 external_above=config.external_data_above, eight_bit_nodes=candidates)
            return path

        result = weight_only_guard(src, samples, gate, gate_log, kept_model=kept_model,
                                   build=lambda keep: quantize([*config.exclude_nodes, *keep]), budget=budget,
                                   on_round=pass_support.guard_progress(ctx, PRECISION, gate_log))  # fmt: skip
        return result, gate_log

    def _advice(self) -> str:
        """What the one line that says the gate still fails suggests, for this config."""
        if self.config.kept_as == "int8":
            return (f" (the guard aims {self.config.guard_margin:g} of the way from each similarity bar to 1 on its "
                    "rows; the verdict on the test rows uses the bars as given); raise max_size_fraction, try "
                    "block_size 16, or use int8-dynamic")
        return "; raise the limit with --guard-max-keep, try block_size 16 or kept_as int8, or use int8-dynamic"

    def _kept_as(self) -> Callable[[Mapping[str, Any]], str]:
        """What a node the guard kept became: with ``kept_as`` int8 a MatMul is 8-bit, anything else (an embedding
        Gather, a node the user excluded) stays FP32, and the warning must say which is which."""
        user = set(self.config.exclude_nodes)
        eight = self.config.kept_as == "int8"
        return lambda row: "INT8" if eight and row["op_type"] == "MatMul" and row["node"] not in user else "FP32"


def tensorrt_refusal(target: object) -> str:
    """The one line that refuses int4-weight for a TensorRT target, saying what TensorRT 11 would need."""
    from optpipe.runtime.tensorrt.lint import INT4_WEIGHT_NEEDS

    return (f"--precision int4-weight is for the cpu target only (target '{target}'): {INT4_WEIGHT_NEEDS}; "
            "optpipe does not write that form yet, so build int4-weight with --target cpu or use int8 here")
