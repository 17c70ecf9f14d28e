"""Every pass optpipe knows, by name: module in ``optpipe.passes`` and class.

Kept as data so ``optpipe passes`` and config files can name passes without
importing the heavy modules that implement them.
"""

from __future__ import annotations

PASSES: dict[str, tuple[str, str]] = {
    "export": ("export_onnx", "ExportOnnx"),
    "simplify": ("simplify", "SimplifyOnnx"),
    "fp16": ("fp16", "Fp16Pass"),
    "int8": ("int8_calibrate", "Int8Pass"),
    "int8-dynamic": ("int8_dynamic", "Int8DynamicPass"),
    "engine-ort": ("engine_ort", "OrtEnginePass"),
    "trt-lint": ("trt_lint", "TrtLintPass"),
    "engine-trt": ("engine_trt", "TrtEnginePass"),
    "validate": ("validate", "ValidatePass"),
    "benchmark": ("benchmark", "BenchmarkPass"),
    "profile": ("profile", "ProfilePass"),
}
