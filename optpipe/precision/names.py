"""Names and defaults the precision passes share with the options that set them (no numpy: the CLI reads them)."""

from __future__ import annotations

#: ``calib_data`` text when the samples were passed in memory (to ``build()`` or by the model file).
IN_MEMORY = "<in-memory>"
#: The guard's time budget per variant, in seconds, unless the build says otherwise.
DEFAULT_GUARD_SECONDS = 60.0
#: ``--calib-method``: how INT8 calibration computes activation ranges.
CALIB_METHODS = ("minmax", "entropy", "percentile")
#: The forms a MatMul ``int8-dynamic``'s guard keeps may take (``kept_as``, done by
#: :mod:`optpipe.precision.kept_weights`): FP32, 8-bit MatMulNBits blocks, or uint8 weights dequantized in
#: front of an FP32 MatMul. Here, not there: the pass's Config reads it before any build, without onnx.
DYNAMIC_KEPT_AS: tuple[str, ...] = ("fp32", "int8", "dequantize")
