"""Dynamic INT8 quantization for the CPU target (ONNX Runtime ``quantize_dynamic``).

Weights are quantized offline (per-channel: int8 symmetric, or uint8 on x86 without VNNI, see
:func:`weight_recipe`); activations are
quantized at run time per tensor by ``DynamicQuantizeLinear`` from their actual
range, so there is no calibration data and no range that can be wrong for
inputs the calibration set did not cover. That is why it keeps transformers
accurate where static INT8 breaks them (outlier activations, attention-mask
Adds). The graph uses ONNX Runtime's integer ops (``DynamicQuantizeLinear`` ->
``MatMulInteger`` -> ``Cast`` -> ``Mul``), which ORT's CPU provider fuses into
``DynamicQuantizeMatMul``; TensorRT cannot run them (it needs explicit Q/DQ),
so this is a ``cpu`` target precision only.

Only MatMul nodes with a constant weight are quantized (``MatMulConstBOnly``):
activation x activation MatMuls (attention scores) stay FP32. ORT's quantizer
rewrites every Gemm into MatMul (+ Add) first, naming the MatMul
``<gemm>_MatMul``, so Linear layers exported as Gemm are quantized too.
Conv is not: ORT's ``ConvInteger`` CPU kernel is usually slower than FP32 Conv.

Embedding tables are: a Gather of a constant float table (token, position
embeddings) is rewritten by ORT's quantizer into a Gather of a uint8 table
followed by DequantizeLinear, which shrinks a sentence transformer's file by
the table's three quarters (MiniLM: 47 MB of its 90 MB are the word
embeddings). Each such Gather is one node the guard may keep in FP32, like a
MatMul, so the table stays FP32 when quantizing it fails the gate.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import onnx

from optpipe.core.scratch_dir import scratch_cwd
from optpipe.onnx.utils import EXTERNAL_DATA_ABOVE, onnx_bytes
from optpipe.precision import onnx_graph
from optpipe.precision.static_quantize import Int8Result, _nothing_left, _prepare, cpu_needs_reduce_range

#: Op types handed to ``quantize_dynamic`` (Attention: ORT's contrib op, when a graph has it; Gather: only
#: of a constant table, an embedding).
OP_TYPES: tuple[str, ...] = ("MatMul", "Attention", "Gather")
#: Integer ops the quantizer writes for a quantized node.
INTEGER_OPS: tuple[str, ...] = ("MatMulInteger", "DynamicQuantizeMatMul", "QAttention")
#: The ``method`` recorded in results: there are no calibrated ranges.
METHOD = "dynamic"


def weight_recipe(reduce_range: bool | None) -> tuple[bool, str]:
    """``(reduce_range, weight type)`` for ``quantize_dynamic``: ``"int8"`` or ``"uint8"`` weights.

    ``None`` decides from this CPU. With VNNI: 8-bit int8 weights (U8S8, no saturation). Without it (AVX2
    only), ORT's U8S8 kernel sums pairs of u8 x s8 products in int16 and saturates, so the choice was 7-bit
    int8 weights (``reduce_range``); measured on all-MiniLM-L6-v2 at its sentences' own lengths (issue 19,
    40 held-out sentences, no node kept in FP32) 7-bit int8 weights reach a worst-row cosine of 0.9865 and
    8-bit uint8 weights (ORT's U8U8 kernel, which widens to 16 bits first and cannot saturate) 0.9908, for
    about 6% more time per sentence. The guard then keeps fewer FP32 MatMuls, which cost more than that.
    An explicit ``reduce_range`` (pinned by tests, or ``OPTPIPE_INT8_REDUCE_RANGE``) keeps int8 weights.
    """
    import os

    from optpipe.precision.static_quantize import REDUCE_RANGE_ENV

    if reduce_range is not None or os.environ.get(REDUCE_RANGE_ENV, "").strip() in ("0", "1"):
        return (cpu_needs_reduce_range() if reduce_range is None else reduce_range), "int8"
    return (False, "uint8") if cpu_needs_reduce_range() else (False, "int8")


def quantizable_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes ``quantize_dynamic`` would quantize: MatMul/Gemm with a constant weight, Attention, embedding Gathers."""
    consts = {i.name for i in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    tables = embedding_tables(model)
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "Attention"
        or (n.op_type in ("MatMul", "Gemm") and len(n.input) >= 2 and n.input[1] in consts)
        or (n.op_type == "Gather" and n.input[0] in tables)
    ]


def embedding_tables(model: onnx.ModelProto) -> set[str]:
    """Initializers a Gather reads rows of: float matrices (rank 2), the tables ORT's quantizer makes int8."""
    floats = {i.name for i in model.graph.initializer
              if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2}  # fmt: skip
    return {n.input[0] for n in model.graph.node if n.op_type == "Gather" and n.input[0] in floats}


def _quantized_nodes(model: onnx.ModelProto) -> list[str]:
    """Integer-op nodes, and Gathers that now read an 8-bit table (the quantizer keeps their op type)."""
    eight_bit = {i.name for i in model.graph.initializer
                 if i.data_type in (onnx.TensorProto.UINT8, onnx.TensorProto.INT8) and len(i.dims) == 2}  # fmt: skip
    return [n.name for n in model.graph.node
            if n.op_type in INTEGER_OPS or (n.op_type == "Gather" and n.input[0] in eight_bit)]  # fmt: skip


def quantize_int8_dynamic(
    src: Path,
    dst: Path,
    *,
    exclude_nodes: Sequence[str] = (),
    reduce_range: bool | None = None,
    external_above: int = EXTERNAL_DATA_ABOVE,
) -> Int8Result:
    """Quantize ``src`` dynamically to ``dst``; ``exclude_nodes`` (names in ``src``) stay FP32.

    ``reduce_range`` (7-bit int8 weights): ``None`` picks the weights from this CPU (:func:`weight_recipe`:
    8-bit uint8 weights on x86 without VNNI, whose U8S8 products saturate; int8 elsewhere). Returns an
    :class:`~optpipe.precision.static_quantize.Int8Result` with ``method="dynamic"`` and
    no ranges; ``status="nothing_quantizable"`` (nothing written) when no
    MatMul/Gemm with a constant weight is left to quantize. ``external_above``: the quantizer's files
    and ``dst`` keep their weights in an external data file above that many bytes (needed over 2 GB).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(src).absolute(), Path(dst).absolute()  # absolute: the quantizer runs in a scratch cwd
    with tempfile.TemporaryDirectory(prefix="optpipe-int8dyn-") as tmp_text, scratch_cwd():
        tmp = Path(tmp_text)
        pre_path, pre, excluded, warnings = _prepare(src, tmp, exclude_nodes, external_above, weights=False)
        quantizable = quantizable_nodes(pre)
        nothing = _nothing_left("cpu", METHOD, quantizable, excluded, warnings,
                                "the model has no MatMul/Gemm with a constant weight")  # fmt: skip
        if nothing is not None:
            return nothing
        reduce_range, weights = weight_recipe(reduce_range)
        gemms = {n.name for n in pre.graph.node if n.op_type == "Gemm"}
        # ORT renames a Gemm to "<name>_MatMul" when it rewrites it, before nodes_to_exclude applies.
        ort_excluded = [*excluded, *(f"{n}_MatMul" for n in excluded if n in gemms)]
        del pre  # the quantizer loads its own copy from pre_path: one copy of the weights, not two
        out_path = tmp / "quantized.onnx"
        quantize_dynamic(
            pre_path,
            out_path,
            op_types_to_quantize=list(OP_TYPES),
            per_channel=True,
            reduce_range=reduce_range,
            weight_type=QuantType.QUInt8 if weights == "uint8" else QuantType.QInt8,
            nodes_to_exclude=ort_excluded,
            # DefaultTensorType: shape inference cannot type the outputs of ORT's fused contrib ops
            # (SkipLayerNormalization, BiasGelu...), so a fused graph needs the default.
            extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
            use_external_data_format=onnx_bytes(pre_path) > external_above,
        )
        quantized_model = onnx.load(str(out_path))
        quantized = _quantized_nodes(quantized_model)
        if not quantized:
            warnings.append("the dynamic quantizer quantized no node")
            return Int8Result("nothing_quantizable", None, "cpu", METHOD, [], quantizable, excluded, {}, warnings)
        onnx_graph.save_atomic(quantized_model, dst, external_above)
    return Int8Result("quantized", dst, "cpu", METHOD, quantized, quantizable, excluded, {}, warnings)
