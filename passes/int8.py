"""INT8 post-training quantization into explicit Q/DQ ONNX, behind an accuracy guard.

TensorRT 10+ is strongly typed and ONNX Runtime runs Q/DQ graphs natively, so
INT8 is decided here, in the ONNX graph, on the CPU. The Q/DQ *style* follows
the target (``Target.qdq_style``): ``cpu`` is ONNX Runtime's fast U8S8 form,
``tensorrt`` is symmetric int8 Q/DQ on the inputs of Conv/Gemm/MatMul only
(see :mod:`optpipe.precision.static_quantize`).

Naive static INT8 is often useless on real models, so the candidate is
checked by the accuracy gate (the validate pass's tolerances, on the golden
data) and, when it fails, :func:`~optpipe.precision.guard.localize.guarded_quantize`
keeps the worst nodes in FP32 and rebuilds, up to a limit. The report shows
the per-layer error table, the kept nodes with their PyTorch module paths and
every iteration. Calibration data is required: without it the build is
refused unless the user opts in to synthetic data, which the report flags.
"""

from __future__ import annotations

import shutil
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
from optpipe.precision.names import CALIB_METHODS

STYLES = ("cpu", "tensorrt")
CACHE_NAME = "calibration.json"  # the ranges, in the build directory's int8/ folder
SYNTHETIC_WARNING = (
    "INT8 WAS CALIBRATED ON SYNTHETIC RANDOM DATA (--synthetic-calib): the ranges describe noise, not "
    "your inputs; its accuracy on real data is unknown. Pass --calib-data with real inputs."
)


@dataclass(frozen=True)
class Int8Config(pass_support.GuardedConfig):
    """Options of the INT8 pass (``optpipe build --precision int8``).

    The guard's fields come from :class:`~optpipe.precision.pass_support.GuardedConfig`;
    ``max_keep_fraction`` counts the nodes the style quantizes: Conv/ConvTranspose/Gemm/MatMul
    for TensorRT, also Add, Mul, Softmax... for ORT's CPU style.
    """

    style: str = option("cpu", help='Q/DQ style: "cpu" (ONNX Runtime U8S8, output quantization) or "tensorrt" '
                        "(symmetric int8 on the inputs of Conv/Gemm/MatMul). build() takes it from the target.",
                        choices=STYLES)
    method: str = option("minmax", help="Calibration method: minmax, entropy (2048-bin KL search) or percentile "
                         "(99.999% of |x|).", choices=CALIB_METHODS, flags=("calib_method",))
    calib_data: str | None = option(
        None, help='Calibration data: .npz, a directory of .npy/.npz, or FILE.py:NAME; "<in-memory>" means build '
        'options carry the samples themselves (options["calib_data"]). None: no data.', flags=("calib_data",))
    synthetic: bool = option(False, help="Calibrate on random inputs when there is no data (the report flags it "
                             "loudly).", flags=("synthetic_calib",))
    synthetic_count: int = 32
    # At most this many samples are read (calibration cost grows linearly with them).
    max_samples: int = 512
    cache_file: str | None = option(None, help="A user calibration cache (JSON): reused when its model/data/method "
                                    "key matches, else rewritten.", flags=("calib_cache",))
    percentile: float = 99.999
    # 7-bit weights for ORT's U8S8 kernels; None = decide from this CPU (no VNNI -> True).
    reduce_range: bool | None = None
    # ONNX node names to keep in FP32 from the start.
    exclude_nodes: tuple[str, ...] = ()
    # Shift Conv/Gemm biases so each quantized layer keeps its FP32 output mean over the calibration
    # rows (optpipe.precision.bias_correction): EfficientNet-Lite0's output cosine 0.973 -> 0.988.
    bias_correction: bool = True
    # cpu style: keep the attention-mask Add and the Softmax it feeds in FP32 from the start
    # (optpipe.precision.fragile); the tensorrt style never quantizes them anyway.
    exclude_fragile: bool = True
    # The calibration samples themselves when calib_data is "<in-memory>" (build(calib_data=...) or the
    # model file's calibration_data()); keyed by content through cache_facts, so not in config_dict().
    samples: Any = field(default=None, compare=False, repr=False, metadata=NOT_IN_KEY)
    # The previous build's directory (the --out directory): its int8 ranges may seed this build when their
    # model/data key still matches. Not in config_dict(): it only saves a recalibration.
    previous_build: str | None = field(default=None, metadata=NOT_IN_KEY)
    # Declared ranges of integer inputs ({name: (low, high)}, --input ...:LOW..HIGH) synthetic calibration
    # draws from; inputs not named use the example's range.
    input_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    # Weights above this many bytes go to ``<file>.data`` beside the model (build's --external-data-above).
    external_data_above: int = EXTERNAL_DATA_ABOVE
    # The most activation bytes calibration may hold at once (the build's memory plan, --max-rss; None: the
    # default chunks). Chunked calibration computes the same ranges, so it is not in the cache key.
    calib_bytes: int | None = field(default=None, metadata=NOT_IN_KEY)


def _integer_ranges(ctx: BuildContext, config: Int8Config) -> dict[str, Any]:
    """Integer input ranges for synthetic calibration: declared ``--input`` ranges, else the example's."""
    from optpipe.precision.calib_data import integer_ranges

    example = ctx.golden.cases[0].inputs if ctx.golden is not None and ctx.golden.cases else None
    return integer_ranges(ctx.input_specs, example, config.input_ranges or None)


class Int8Pass(Pass):
    """ONNX -> INT8 Q/DQ ONNX (``int8/model.onnx``), calibrated and accuracy-guarded."""

    name = "int8"
    description = "calibrate and quantize to INT8 Q/DQ (target's style); keep nodes in FP32 if the gate fails"
    input_kind = ArtifactKind.ONNX
    output_kind = ArtifactKind.ONNX
    Config = Int8Config
    uses = ("onnx", "onnxruntime")
    # Deterministic given its input, config and cache_facts() (the samples by content, the gate's
    # tolerances, the Q/DQ style, this CPU's reduce_range decision, the helper code).
    cacheable = True


    def _fragile(self, src: Path) -> list[str]:
        """Known-fragile nodes to keep in FP32 from the start (cpu style only), not already excluded."""
        if self.config.style != "cpu" or not self.config.exclude_fragile:
            return []
        from optpipe.precision import onnx_graph
        from optpipe.precision.fragile import mask_softmax_nodes

        return [n for n in mask_softmax_nodes(onnx_graph.load_skeleton(src)) if n not in self.config.exclude_nodes]

    def run(self, artifact: Artifact, ctx: BuildContext) -> PassResult:
        from optpipe.precision.guard.gate import gate_runtime_note

        assert artifact.path is not None
        config = self.config
        src = Path(artifact.path)
        dst = ctx.path("int8", "model.onnx")
        samples, source = self._samples(ctx)
        warnings: list[str] = []
        if config.synthetic:
            warnings.append(SYNTHETIC_WARNING)
        cache_path, seed = self._cache_path(ctx, warnings)
        fragile = self._fragile(src)

        int8_options: dict[str, object] = {
            "style": config.style,
            "method": config.method,
            "cache_file": cache_path,
            "percentile": config.percentile,
            "reduce_range": config.reduce_range,
            "exclude_nodes": [*config.exclude_nodes, *fragile],
            "bias_correction": config.bias_correction,
            "external_above": config.external_data_above,
            "calib_bytes": config.calib_bytes,
        }
        level = "none" if config.style == "tensorrt" else "all"
        result, gate_log = pass_support.run_guard(
            ctx, src, dst, samples, config, gate_name="int8", level=level, precision="int8", int8_options=int8_options
        )
        first = result.results[0] if result.results else None
        if first is not None:
            # The quantizer names the staging copy of the cache; say where the ranges came from instead.
            warnings.extend(w.replace(str(cache_path), str(seed or cache_path)) for w in first.warnings)
        calibration = {
            "samples": len(samples),
            "source": source,
            "synthetic": config.synthetic,
            "method": config.method,
            "cache_file": str(cache_path.relative_to(ctx.work_dir)),
            "cache_hit": bool(first.cache_hit) if first is not None else False,
        }
        if config.synthetic and config.calib_data is None:  # which value ranges the random integer inputs used
            calibration["integer_ranges"] = {name: r.to_dict() for name, r in _integer_ranges(ctx, config).items()}
        metrics: dict[str, Any] = {
            "style": config.style,
            "method": config.method,
            "gate_runtime": gate_runtime_note(config.style),
            "calibration": calibration,
            "synthetic_calibration": config.synthetic,
            "fragile_excluded": fragile,
            "bias_correction": (result.results[-1].bias_correction if result.results else None),
        }
        if result.path is None:  # nothing quantizable: say so, never ship FP32 labelled int8
            pass_support.skip_nothing_quantizable("int8", result, metrics)

        advice = "; raise the limit with --guard-max-keep or use fp16/fp32"
        guard_metrics, guard_warnings = pass_support.guard_report(
            ctx, src, result, gate_log, samples, config, precision="int8", advice=advice
        )
        status = "quantized" if result.passed else "gate_failed"
        metrics.update(status=status, **pass_support.quantized_counts(result), **guard_metrics)
        warnings.extend(guard_warnings)
        out = artifact.derive(
            path=dst,
            sha256=sha256_files(onnx_files(dst)),
            precision="int8",
            producer=f"int8/{config.style}/{config.method}",
        )
        return PassResult(out, modified=True, metrics=metrics, warnings=warnings)

    @classmethod
    def code_modules(cls) -> tuple[ModuleType, ...]:
        """The quantizer, guard and gate helpers that decide the output (part of the cache key)."""
        return pass_support.guard_code_modules()

    def cache_facts(self, ctx: BuildContext) -> dict[str, Any]:
        """What the output depends on outside the config (optpipe.cache.store); the seeded ranges are not:
        a calibration cache is reused only when its model/data/method key matches, so it changes no output."""
        from optpipe.precision.static_quantize import cpu_needs_reduce_range

        samples, source = self._samples(ctx)
        facts = pass_support.precision_facts(ctx, samples, source)
        reduce_range = self.config.reduce_range
        if reduce_range is None:
            reduce_range = self.config.style == "cpu" and cpu_needs_reduce_range()
        facts["reduce_range"] = reduce_range
        facts["synthetic"] = {"seed": 0, "count": self.config.synthetic_count} if self.config.synthetic else None
        return facts

    def _samples(self, ctx: BuildContext) -> tuple[list[dict[str, np.ndarray]], str]:
        """Calibration samples and where they came from; loaded once per build (an iterator reads once)."""
        return pass_support.samples_once(self, ctx, self._load_samples)

    def _load_samples(self, ctx: BuildContext) -> tuple[list[dict[str, np.ndarray]], str]:
        from optpipe.precision.calib_data import load_samples, synthetic_samples

        config = self.config
        if config.calib_data is not None:
            data = pass_support.calib_data(config)
            return load_samples(data, ctx.input_specs, max_samples=config.max_samples), str(config.calib_data)
        dims = {d.axis_name: d.opt for d in ctx.dynamic}
        ranges = _integer_ranges(ctx, config)
        samples = synthetic_samples(ctx.input_specs, config.synthetic_count, dynamic_dims=dims,
                                    int_ranges={name: (r.low, r.high) for name, r in ranges.items()})  # fmt: skip
        drawn = "; ".join(f"{name} in {r.low}..{r.high} from the {r.origin}" for name, r in ranges.items())
        return samples, f"synthetic ({config.synthetic_count} random samples{'; ' + drawn if drawn else ''})"

    def _cache_path(self, ctx: BuildContext, warnings: list[str]) -> tuple[Path, Path | None]:
        """Where the ranges are stored (the build's ``int8/calibration.json``) and the file it was seeded from.

        A user ``--calib-cache`` file is copied in first (``build()`` already
        refused a corrupt one, naming it); otherwise the previous build in the
        same output directory (``config.previous_build``) is, so a rebuild with
        ``--overwrite`` reuses its ranges when the model and data hashes still
        match (the key is checked, never assumed). A corrupt previous-build file
        is only a warning: it is recalibrated. The ranges are written back to
        ``--calib-cache`` by ``build()`` once the build directory is published.
        """
        from optpipe.precision.calib_cache import load_ranges

        path = ctx.path("int8", CACHE_NAME)
        seeds = []
        if self.config.cache_file:
            seeds.append(Path(self.config.cache_file))
        if self.config.previous_build:
            seeds.append(Path(self.config.previous_build) / "int8" / CACHE_NAME)
        for seed in seeds:
            if seed.is_file():
                try:
                    load_ranges(seed)
                except UserInputError as error:
                    if self.config.cache_file and seed == Path(self.config.cache_file):
                        raise
                    warnings.append(f"{error}; ignored it and recalibrated")
                    continue
                shutil.copyfile(seed, path)
                return path, seed
        return path, None
