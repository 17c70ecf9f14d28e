"""FP16 conversion of the ONNX graph, behind the accuracy guard.

TensorRT 10+ is strongly typed, so FP16 is decided in the ONNX graph; the same
file runs on ONNX Runtime's CPU provider, which is where it is checked (CPU
FP16 checks accuracy, not speed: on AVX2 ORT inserts Casts). Nodes that would
overflow FP16 (|x| > 65504, observed on calibration and golden inputs) stay in
FP32 with the reason recorded; if the converted model still fails the gate,
:func:`~optpipe.precision.guard.localize.guarded_quantize` keeps the worst nodes in
FP32 as well, up to a limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from optpipe.core.artifact import Artifact, ArtifactKind, sha256_files
from optpipe.core.errors import UserInputError
from optpipe.infra.declared_options import option
from optpipe.infra.pass_base import NOT_IN_KEY, BuildContext, Pass, PassResult
from optpipe.onnx.utils import EXTERNAL_DATA_ABOVE, onnx_files
from optpipe.precision import pass_support

#: Calibration samples read for the FP16 overflow check (it exposes every tensor, so it is costly).
MAX_RANGE_SAMPLES = 32


@dataclass(frozen=True)
class Fp16Config(pass_support.GuardedConfig):
    """Options of the FP16 pass (``optpipe build --precision fp16``).

    The guard's fields (``guard``, ``max_keep_fraction`` of all nodes, ...) come from
    :class:`~optpipe.precision.pass_support.GuardedConfig`.
    """

    # Keep graph inputs/outputs FP32, so callers feed and read the same data as the FP32 model.
    keep_io_types: bool = True
    # ONNX node names to keep in FP32 from the start.
    node_block_list: tuple[str, ...] = ()
    calib_data: str | None = option(
        None, help="Calibration data (same forms as --calib-data) scanned for FP16 overflow besides the golden "
        'inputs; "<in-memory>" = options["calib_data"]; None = golden inputs only.', flags=("calib_data",))
    # The calibration samples themselves when calib_data is "<in-memory>" (build(calib_data=...) or the
    # model file's calibration_data()); keyed by content through cache_facts, so not in config_dict().
    samples: Any = field(default=None, compare=False, repr=False, metadata=NOT_IN_KEY)
    # Weights above this many bytes go to ``<file>.data`` beside the model (build's --external-data-above).
    external_data_above: int = EXTERNAL_DATA_ABOVE


class Fp16Pass(Pass):
    """ONNX -> FP16 ONNX (``fp16/model.onnx``) with overflow-prone nodes kept in FP32."""

    name = "fp16"
    description = "convert to FP16, keeping overflowing nodes (and any that fail the accuracy gate) in FP32"
    input_kind = ArtifactKind.ONNX
    output_kind = ArtifactKind.ONNX
    Config = Fp16Config
    uses = ("onnx", "onnxruntime")
    # Deterministic given its input, config and cache_facts() (the samples by content, the gate's
    # tolerances, the helper code), so a rebuild that changes none of them reuses it.
    cacheable = True

    def run(self, artifact: Artifact, ctx: BuildContext) -> PassResult:
        from optpipe.precision import VariantSkipped
        from optpipe.precision.guard.gate import gate_runtime_note

        assert artifact.path is not None
        config = self.config
        src = Path(artifact.path)
        dst = ctx.path("fp16", "model.onnx")
        samples, _ = self._samples(ctx)
        fp16_options: dict[str, object] = {
            "keep_io_types": config.keep_io_types,
            "node_block_list": list(config.node_block_list),
            "external_above": config.external_data_above,
        }
        result, gate_log = pass_support.run_guard(
            ctx, src, dst, samples, config, gate_name="fp16", level="all", precision="fp16", fp16_options=fp16_options
        )
        last = result.results[-1] if result.results else None
        if result.path is None or last is None:
            raise VariantSkipped("fp16 skipped: no node could be converted", {"status": "nothing_convertible"})
        guard_kept = set(result.kept_nodes)
        kept_fp32 = {
            node: ("accuracy guard: largest error contribution" if node in guard_kept else reason)
            for node, reason in last.kept_fp32.items()
        }
        guard_metrics, guard_warnings = pass_support.guard_report(
            ctx, src, result, gate_log, samples, config, precision="fp16"
        )
        warnings = [*last.warnings, *guard_warnings]
        metrics: dict[str, Any] = {
            "status": "converted" if result.passed else "gate_failed",
            "gate_runtime": gate_runtime_note("cpu"),
            "converted_nodes": last.converted_nodes,
            "total_nodes": last.total_nodes,
            "kept_fp32": kept_fp32,
            "overflow_tensors": {name: float(peak) for name, peak in last.overflow.items()},
            "range_samples": len(samples),
            **guard_metrics,
        }
        out = artifact.derive(path=dst, sha256=sha256_files(onnx_files(dst)), precision="fp16", producer="fp16")
        return PassResult(out, modified=True, metrics=metrics, warnings=warnings)

    @classmethod
    def code_modules(cls) -> tuple[ModuleType, ...]:
        """The quantizer, guard and gate helpers that decide the output (part of the cache key)."""
        return pass_support.guard_code_modules()

    def cache_facts(self, ctx: BuildContext) -> dict[str, Any]:
        """The samples (by content) and tolerances the output depends on (optpipe.cache.store)."""
        return pass_support.precision_facts(ctx, *self._samples(ctx))

    def _samples(self, ctx: BuildContext) -> tuple[list[dict[str, np.ndarray]], str]:
        """Golden inputs (always there) plus up to MAX_RANGE_SAMPLES calibration samples, and their source.

        Loaded once per build (cache_facts and run share them: in-memory data may be a one-shot iterator).
        """
        return pass_support.samples_once(self, ctx, self._load_samples)

    def _load_samples(self, ctx: BuildContext) -> tuple[list[dict[str, np.ndarray]], str]:
        from optpipe.precision.calib_data import load_samples

        samples = pass_support.golden_inputs(ctx)
        source = "golden"
        if self.config.calib_data is not None:
            data = pass_support.calib_data(self.config)
            samples.extend(load_samples(data, ctx.input_specs, max_samples=MAX_RANGE_SAMPLES))
            source = f"golden+{self.config.calib_data}"
        if not samples:
            raise UserInputError("fp16 conversion needs golden or calibration inputs to check ranges on")
        return samples, source
