"""BuildOptions -> each pass's Config: the one place a build's options become pass configs.

Why here and not in ``passes/``: a pass knows only its own Config (its declared options), so the
passes sit below the builder in the layer contract and never import the option parser. The
builder, which owns :class:`~optpipe.builder.options.BuildOptions`, fills each Config from it and
refuses, before any export, a build that a pass could not run (no calibration data, a target the
pass cannot serve).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from optpipe.builder.options import BuildOptions, TensorRTOptions
from optpipe.core.errors import UserInputError
from optpipe.infra.pass_base import Pass
from optpipe.passes.engine_trt import TrtEngineConfig, TrtEnginePass
from optpipe.passes.fp16 import Fp16Config, Fp16Pass
from optpipe.passes.fuse_transformer import FUSE_OFF, FuseTransformerConfig, FuseTransformerPass
from optpipe.passes.int4_weight import Int4WeightConfig, Int4WeightPass, tensorrt_refusal
from optpipe.passes.int8 import STYLES, Int8Config, Int8Pass
from optpipe.passes.int8_dynamic import Int8DynamicConfig, Int8DynamicPass
from optpipe.precision.names import IN_MEMORY
from optpipe.runtime.target import Target


def guard_fields(options: BuildOptions) -> dict[str, Any]:
    """The guard's Config fields (``guard``, ``max_keep_fraction``, ``guard_seconds``) and the gate's."""
    guard = options.guard
    return {"guard": guard.enabled, "max_keep_fraction": float(guard.max_keep_fraction),
            "guard_seconds": None if guard.guard_seconds is None else float(guard.guard_seconds),
            **options.gate_fields()}


def fp16_pass(options: BuildOptions) -> Fp16Pass:
    """The fp16 pass for a build's options."""
    calib = options.calibration
    return Fp16Pass(Fp16Config(node_block_list=options.guard.fp16_block, calib_data=calib.source,
                               samples=calib.samples, **guard_fields(options)))


def int8_pass(options: BuildOptions, target: Any) -> Int8Pass:
    """The int8 pass for a build's options: refuses a build without calibration data now, before any export."""
    style = str(getattr(target, "qdq_style", "cpu"))
    if style not in STYLES:
        raise UserInputError(f"target '{getattr(target, 'name', target)}' has unknown Q/DQ style '{style}'")
    calib = options.calibration
    if calib.source is None and not calib.synthetic:
        raise UserInputError(
            "INT8 needs calibration data: pass --calib-data FILE.npz (input-name keys), a directory "
            "of .npy/.npz files or FILE.py:NAME, define calibration_data() in the model file, or "
            "--synthetic-calib to calibrate on random inputs (not recommended)"
        )
    source = calib.source
    if source and source != IN_MEMORY and ".py:" not in source and not Path(source).exists():
        raise UserInputError(f"calibration data '{source}' does not exist")
    return Int8Pass(Int8Config(
        style=style, method=calib.method, calib_data=source, synthetic=calib.synthetic and source is None,
        cache_file=calib.cache, exclude_nodes=options.guard.int8_exclude, samples=calib.samples,
        previous_build=options.out_dir, input_ranges=calib.ranges_dict(), calib_bytes=options.calib_bytes,
        **guard_fields(options),
    ))  # fmt: skip


def int8_dynamic_pass(options: BuildOptions, target: Any) -> Int8DynamicPass:
    """The int8-dynamic pass for a build's options: refuses the tensorrt target now, before any export runs."""
    if str(getattr(target, "qdq_style", "cpu")) != "cpu":
        raise UserInputError(
            f"--precision int8-dynamic is for the cpu target only: target "
            f"'{getattr(target, 'name', target)}' needs explicit Q/DQ INT8 (TensorRT cannot run ONNX "
            "Runtime's DynamicQuantizeLinear/MatMulInteger ops); use --precision int8 with --calib-data"
        )
    return Int8DynamicPass(Int8DynamicConfig(exclude_nodes=options.guard.int8_exclude, **guard_fields(options)))


def int4_weight_pass(options: BuildOptions, target: Any) -> Int4WeightPass:
    """The int4-weight pass: refuses the tensorrt target now, in one line that says what TensorRT 11 would need."""
    if str(getattr(target, "qdq_style", "cpu")) != "cpu":
        raise UserInputError(tensorrt_refusal(getattr(target, "name", target)))
    return Int4WeightPass(Int4WeightConfig(**guard_fields(options)))


def fuse_transformer_pass(options: BuildOptions, target: Any) -> FuseTransformerPass:
    """The pass of a fused variant: refuses a target that is not ONNX Runtime CPU, before any export."""
    if str(getattr(target, "qdq_style", "cpu")) != "cpu":
        name = getattr(target, "name", target)
        raise UserInputError(f"fused variants are for the cpu target only: target '{name}' needs portable ONNX "
                             "(the fused ops are ONNX Runtime contrib ops)")
    if options.fuse == FUSE_OFF:
        raise UserInputError("fused variants are turned off (--fuse off)")
    return FuseTransformerPass(FuseTransformerConfig(model_type=options.fuse, skip_when_unchanged=True))


def store_weights(passes: Sequence[Pass], options: BuildOptions) -> None:
    """Give every pass that writes a model the build's ``--external-data-above`` (its Config field of that name).

    Why one loop and not one argument per pass: export, simplify, fuse, each precision and the ORT engine all
    write model files, and a pass added later that declares the field gets the build's value without an edit
    here. The field is in each pass's config, so in its cache key: the same weights stored in one file or
    two are different artifacts, and a cache hit must hand back the files this build asked for.
    """
    for pass_ in passes:
        if any(f.name == "external_data_above" for f in dataclasses.fields(pass_.config)):
            pass_.config = dataclasses.replace(pass_.config, external_data_above=options.external_data_above)


def trt_engine_config(trt: TensorRTOptions) -> TrtEngineConfig:
    """The TensorRT engine Config from a build's TensorRT options (unset ones keep the defaults), checked."""
    return TrtEngineConfig(**trt.set_values())


def engine_pass(target: Target, options: BuildOptions | None = None) -> Pass:
    """``target``'s engine pass, its Config filled from ``options`` when the pass reads any (TensorRT's)."""
    from optpipe.infra.registry import engine_pass as default_engine_pass

    if options is not None and target.engine_pass_name == TrtEnginePass.name:
        return TrtEnginePass(trt_engine_config(options.trt))
    return default_engine_pass(target)
