"""What a MatMul the dynamic INT8 guard keeps becomes (``int8-dynamic``'s ``kept_as``), other than FP32.

Why: a node the guard keeps out of dynamic INT8 stays FP32 (4 bytes a weight), so on all-MiniLM-L6-v2 the
5 MatMuls it keeps for a per-row cosine of 0.99 grow the file from 22.8 MB to 31.6 MB. The error dynamic
INT8 adds is mostly its per-tensor activation quantization (one scale for a whole activation, outlier
channels and all), not its 8-bit weights; a kept node may therefore keep 8-bit weights if its activation
is not quantized per tensor. Two forms, both about 1 byte a weight in the file:

* ``int8``: ONNX Runtime's weight-only ``MatMulNBits`` with 8-bit blocks of 128 (int4-weight's ``kept_as``,
  :func:`optpipe.precision.weight_only_quantize` does the work), ``accuracy_level`` 4: MLAS quantizes the
  activation per block of each row at run time (fast; finer than per tensor, but an outlier channel still
  takes its block's range);
* ``dequantize``: per-channel uint8 weights and a ``DequantizeLinear`` in front of the FP32 ``MatMul``: the
  activation stays FP32 and the weight is dequantized at each run (ONNX Runtime does not fold a
  ``DequantizeLinear`` of a constant; it keeps it for its Q/DQ fusions).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from optpipe.onnx.utils import EXTERNAL_DATA_ABOVE
from optpipe.precision import onnx_graph

#: The suffix of the uint8 copy of a weight the ``dequantize`` form writes (and reads back in reports).
DEQUANTIZED_SUFFIX = "_kept_uint8"


def _matmul_weights(model: onnx.ModelProto, nodes: set[str]) -> dict[str, onnx.TensorProto]:
    """Node name -> its constant 2-D float weight, for each MatMul in ``nodes`` that has one."""
    weights = {i.name: i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2}
    return {n.name: weights[n.input[1]] for n in model.graph.node
            if n.name in nodes and n.op_type == "MatMul" and len(n.input) == 2 and n.input[1] in weights}  # fmt: skip


def keep_as_dequantized(path: Path, nodes: Sequence[str], *, external_above: int = EXTERNAL_DATA_ABOVE) -> list[str]:
    """Rewrite the model at ``path``: each MatMul of ``nodes`` with a constant 2-D float weight reads it through
    ``DequantizeLinear`` of a per-output-channel uint8 copy (asymmetric, 0 exact). Others are left alone.

    A weight another node also reads keeps its FP32 copy for that node. Returns the nodes rewritten; the
    model is replaced (through a temporary name) only when there is one.
    """
    model = onnx_graph.load_model(Path(path))
    chosen = _matmul_weights(model, set(nodes))
    if not chosen:
        return []
    made: dict[str, str] = {}
    added: list[onnx.NodeProto] = []
    for node in model.graph.node:
        if node.name not in chosen:
            continue
        weight = chosen[node.name]
        if weight.name not in made:
            made[weight.name] = f"{weight.name}_dequantized"
            q, scale, zero = _uint8_per_column(numpy_helper.to_array(weight))
            names = [f"{weight.name}{DEQUANTIZED_SUFFIX}", f"{weight.name}_kept_scale", f"{weight.name}_kept_zero"]
            model.graph.initializer.extend(numpy_helper.from_array(a, n) for a, n in zip((q, scale, zero), names,
                                                                                           strict=True))
            added.append(helper.make_node("DequantizeLinear", names, [made[weight.name]], axis=1,
                                          name=f"{node.name}_kept_dequantize"))  # fmt: skip
        node.input[1] = made[weight.name]
    used = {i for n in model.graph.node for i in n.input}
    for weight in {w.name: w for w in chosen.values()}.values():
        if weight.name not in used:
            model.graph.initializer.remove(weight)
    nodes_now = [*added, *model.graph.node]  # each DequantizeLinear reads initializers only: first is in order
    model.graph.ClearField("node")
    model.graph.node.extend(nodes_now)
    onnx_graph.save_atomic(model, Path(path), external_above)
    return [n for n in nodes if n in chosen]


def _uint8_per_column(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric uint8 of a (K, N) weight, one scale and zero point per column N; the range includes 0."""
    low = np.minimum(weight.min(axis=0), 0.0)
    high = np.maximum(weight.max(axis=0), 0.0)
    scale = ((high - low) / 255.0).astype(np.float32)
    scale[scale == 0] = 1.0  # an all-zero column: any scale gives exact zeros
    zero = np.clip(np.round(-low / scale), 0, 255).astype(np.uint8)
    q = np.clip(np.round(weight / scale) + zero, 0, 255).astype(np.uint8)
    return q, scale, zero


def keep_as_eight_bit(path: Path, nodes: Sequence[str], *, external_above: int = EXTERNAL_DATA_ABOVE) -> list[str]:
    """Rewrite the model at ``path``: its MatMuls ``nodes`` (constant 2-D float weight) become 8-bit MatMulNBits
    blocks (:data:`~optpipe.precision.weight_only_quantize.KEPT_BLOCK_SIZE`, ``accuracy_level`` 4).

    ``accuracy_level`` 1 (FP32 compute) was measured 3-4x slower than the FP32 MatMul at 10-35 tokens on AVX2,
    so 4. A node of ``nodes`` that is no such MatMul (an Attention, an embedding Gather) is left alone.
    Returns the nodes rewritten; the model is replaced only when there is one.
    """
    from optpipe.precision.weight_only_quantize import quantize_int4_weight

    model = onnx_graph.load_model(Path(path))
    chosen = _matmul_weights(model, set(nodes))
    if not chosen:
        return []
    del model
    # int4-weight's own path with every node 8-bit and nothing 4-bit: the others are excluded from it.
    others = [n.name for n in onnx.load(str(path), load_external_data=False).graph.node if n.name not in chosen]
    quantize_int4_weight(Path(path), Path(path), exclude_nodes=others, eight_bit_nodes=list(chosen),
                         external_above=external_above)  # fmt: skip
    return [n for n in nodes if n in chosen]


def kept_forms(path: Path) -> dict[str, str]:
    """Node name -> ``"int8"`` or ``"dequantize"``, for each kept MatMul of the model at ``path`` that is no longer
    FP32: read from the model shipped (its graph only), so a report says what the file holds."""
    model = onnx.load(str(path), load_external_data=False)
    forms = {n.name.removesuffix("_Q8"): "int8" for n in model.graph.node
             if n.op_type == "MatMulNBits" and n.name.endswith("_Q8")}  # fmt: skip
    dequantized = {n.output[0] for n in model.graph.node
                   if n.op_type == "DequantizeLinear" and n.input[0].endswith(DEQUANTIZED_SUFFIX)}  # fmt: skip
    forms.update({n.name: "dequantize" for n in model.graph.node
                  if n.op_type == "MatMul" and n.input[1] in dequantized})  # fmt: skip
    return forms
