"""Every pass optpipe knows, by name: module in ``optpipe.passes`` and class.

Kept as data so ``optpipe passes``, config files and targets can name passes
without importing the heavy modules that implement them, and so the library
below the build layer never imports ``optpipe.passes``: a target names its
engine pass by key (``Target.engine_pass_name``) and the build layer turns
that key into a configured pass here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from optpipe.infra.pass_base import Pass
    from optpipe.runtime.target import Target

PASSES: dict[str, tuple[str, str]] = {
    "export": ("export_onnx", "ExportOnnx"),
    "simplify": ("simplify", "SimplifyOnnx"),
    "fp16": ("fp16", "Fp16Pass"),
    "int8": ("int8", "Int8Pass"),
    "fuse-transformer": ("fuse_transformer", "FuseTransformerPass"),
    "int8-dynamic": ("int8_dynamic", "Int8DynamicPass"),
    "int4-weight": ("int4_weight", "Int4WeightPass"),
    "engine-ort": ("engine_ort", "OrtEnginePass"),
    "trt-lint": ("trt_lint", "TrtLintPass"),
    "engine-trt": ("engine_trt", "TrtEnginePass"),
    "validate": ("validate", "ValidatePass"),
    "benchmark": ("benchmark", "BenchmarkPass"),
    "profile": ("profile", "ProfilePass"),
}


def pass_class(name: str) -> type[Pass]:
    """The pass class registered under ``name`` (imports its module)."""
    module, cls = PASSES[name]
    found: type[Pass] = getattr(importlib.import_module(f"optpipe.passes.{module}"), cls)
    return found


def engine_pass(target: Target) -> Pass:
    """The pass that turns a portable ONNX artifact into ``target``'s engine, with its default Config.

    A build's options reach its Config through :func:`optpipe.builder.pass_configs.engine_pass`.
    """
    return pass_class(target.engine_pass_name)()


def pre_engine_passes(target: Target) -> list[Pass]:
    """``target``'s checks that run on the CPU before its engine build (e.g. the TensorRT lint)."""
    return [pass_class(name)() for name in target.check_pass_names]
