"""The options of weight-only INT4 (``--precision int4-weight``) and the values ONNX Runtime's CPU kernels take.

Why a module of its own: the pass's Config declares these choices when the builder imports it, before any
build, so they must not pull in onnx (:mod:`optpipe.precision.weight_only_quantize` does the work).
"""

from __future__ import annotations

from dataclasses import dataclass

from optpipe.core.errors import UserInputError

#: The block sizes ONNX Runtime's CPU MatMulNBits kernels take (a power of two >= 16).
BLOCK_SIZES: tuple[int, ...] = (16, 32, 64, 128)
#: ``accuracy_level`` values of MatMulNBits: 0 unset (the kernel's default, fp32 compute), 1 fp32, 2 fp16,
#: 3 bf16, 4 int8 (activations quantized per block at run time).
ACCURACY_LEVELS: tuple[int, ...] = (0, 1, 2, 3, 4)
#: ONNX Runtime's data-free weight-only algorithms: round to nearest per block, or HQQ (which fits each
#: block's scale and zero point to the weights' error, arXiv 2309.15531).
ALGORITHMS: tuple[str, ...] = ("default", "hqq")
#: What the accuracy guard keeps a MatMul as: FP32 (left out of the quantizer), or 8-bit MatMulNBits blocks
#: (blocks of 128, about 1.04 bytes per weight against FP32's 4: a guard that must keep most of a model's MatMuls
#: still ships a model far smaller than FP32).
KEPT_AS: tuple[str, ...] = ("fp32", "int8")

@dataclass(frozen=True)
class Int4Options:
    """How weights are quantized: ``block_size`` per scale, ``symmetric`` (no zero point), ``accuracy_level``."""

    block_size: int = 32
    symmetric: bool = False
    accuracy_level: int = 4
    embeddings: bool = False  # also the embedding tables (GatherBlockQuantized; the model's opset becomes >= 21)
    algorithm: str = "default"  # "default": round to nearest; "hqq": Half-Quadratic Quantization (no data, torch)
    embeddings_int8: bool = False  # the embedding tables as uint8 (one scale and zero point each), opset unchanged
    kept_as: str = "fp32"  # what a node the guard keeps becomes: "fp32" or "int8" (8-bit MatMulNBits)

    def check(self) -> None:
        """Refuse, in one line, values ONNX Runtime's CPU kernels do not take."""
        if self.block_size not in BLOCK_SIZES:
            raise UserInputError(f"int4-weight block_size must be one of {', '.join(map(str, BLOCK_SIZES))}, "
                                 f"got {self.block_size}")
        if self.algorithm not in ALGORITHMS:
            raise UserInputError(f"int4-weight algorithm must be one of {', '.join(ALGORITHMS)}, "
                                 f"got {self.algorithm!r}")
        if self.algorithm == "hqq" and (self.embeddings or self.symmetric):
            raise UserInputError("int4-weight algorithm 'hqq' quantizes MatMul weights only, asymmetric (float zero "
                                 "points): drop embeddings / symmetric, or use algorithm 'default'")
        if self.kept_as not in KEPT_AS:
            raise UserInputError(f"int4-weight kept_as must be one of {', '.join(KEPT_AS)}, got {self.kept_as!r}")
        if self.embeddings and self.embeddings_int8:
            raise UserInputError("int4-weight embeddings (4-bit tables) and embeddings_int8 (8-bit tables) exclude "
                                 "each other: choose one")
        if self.accuracy_level not in ACCURACY_LEVELS:
            raise UserInputError(f"int4-weight accuracy_level must be one of "
                                 f"{', '.join(map(str, ACCURACY_LEVELS))}, got {self.accuracy_level}")
