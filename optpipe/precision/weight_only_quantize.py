"""Weight-only INT4 for the CPU target (ONNX Runtime's ``MatMulNBits``), ``--precision int4-weight``.

Why weight-only: a transformer's size and its memory traffic are its MatMul weights; storing them as
4-bit blocks (one scale, and a zero point unless symmetric, per ``block_size`` values along K) shrinks
each one about 6-7x, and ONNX Runtime's CPU ``MatMulNBits`` kernel reads them packed. Activations
stay float (``accuracy_level`` 4 lets the kernel quantize them to int8 on the fly for speed), so no
calibration data is needed and nothing depends on the range of inputs seen.

Only MatMul nodes with a constant 2-D float weight are quantized (activation x activation MatMuls,
attention scores, stay FP32). ONNX Runtime's quantizer only rewrites MatMul, so a Gemm with a
constant weight (a Linear on 2-D input) is first rewritten here into MatMul (+ Add of its bias): the
MatMul keeps the Gemm's name and the Add writes the Gemm's output, so the guard's node names and
tensor names still refer to the FP32 model. Embedding tables (Gather) stay FP32: ONNX Runtime's
4-bit Gather needs opset 21, which it forces onto the whole model ("may not be a valid model").

The graph uses the ``com.microsoft`` contrib op, which only ONNX Runtime runs; TensorRT would need
the same weights as a blocked ``DequantizeLinear`` (INT4) -> ``MatMul``
(:data:`optpipe.runtime.tensorrt.lint.INT4_WEIGHT_NEEDS`, which the plan's refusal and ``optpipe lint`` print).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from optpipe.onnx.utils import EXTERNAL_DATA_ABOVE, save_onnx
from optpipe.precision import onnx_graph
from optpipe.precision.dynamic_quantize import embedding_tables
from optpipe.precision.int4_options import Int4Options
from optpipe.precision.static_quantize import Int8Result, _nothing_left

#: The op ORT's quantizer writes for a quantized MatMul.
NBITS_OP = "MatMulNBits"
#: The op it writes for a quantized embedding Gather (``Int4Options.embeddings``).
GATHER_OP = "GatherBlockQuantized"
#: The ``method`` recorded in results (no calibration ranges).
METHOD = "weight-only-int4"


def _constant_weights(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Float initializers of rank 2, by name: the weights MatMulNBits can hold."""
    return {i.name: i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2}


def _gemm_rewritable(node: onnx.NodeProto, weights: dict[str, onnx.TensorProto]) -> bool:
    """A Gemm ``A @ B (+ C)`` with a constant 2-D weight and no transposed A or alpha: one MatMul (+ Add)."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    return (node.op_type == "Gemm" and len(node.input) >= 2 and node.input[1] in weights
            and attrs.get("transA", 0) == 0 and float(attrs.get("alpha", 1.0)) == 1.0)  # fmt: skip


def quantizable_nodes(model: onnx.ModelProto, embeddings: bool = False) -> list[str]:
    """Nodes ``int4-weight`` quantizes: MatMul (or rewritable Gemm) with a constant 2-D float weight.

    With ``embeddings``, also each Gather of an embedding table (a constant 2-D float matrix).
    """
    weights = _constant_weights(model)
    tables = _embedding_gathers(model) if embeddings else set()
    return [n.name for n in model.graph.node if _gemm_rewritable(n, weights) or n.name in tables
            or (n.op_type == "MatMul" and len(n.input) == 2 and n.input[1] in weights)]  # fmt: skip


def _embedding_gathers(model: onnx.ModelProto) -> set[str]:
    """Gathers that read rows of an embedding table, unless the opset bump to 21 would change an op's meaning.

    ONNX Runtime's 4-bit Gather needs opset 21 and raises the model's opset to it; GroupNormalization is
    the op whose meaning changed (per-group to per-channel scale), so a model with it keeps its tables FP32.
    """
    if any(n.op_type == "GroupNormalization" for n in model.graph.node):
        return set()
    tables = embedding_tables(model)
    return {n.name for n in model.graph.node if n.op_type == "Gather" and n.input[0] in tables}


def gemms_to_matmuls(model: onnx.ModelProto, skip: Sequence[str] = ()) -> int:
    """Rewrite each rewritable Gemm not in ``skip`` into MatMul (named as the Gemm) + Add (writing its output).

    In place; returns how many were rewritten. A transposed weight gets its own transposed copy, and
    ``beta`` is folded into a copy of the bias, so a weight shared with another node is never changed.
    """
    weights = _constant_weights(model)
    inits = {i.name: i for i in model.graph.initializer}
    nodes: list[onnx.NodeProto] = []
    count = 0
    for node in model.graph.node:
        if node.name in skip or not _gemm_rewritable(node, weights):
            nodes.append(node)
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        weight = node.input[1]
        if attrs.get("transB", 0):
            array = numpy_helper.to_array(weights[weight]).T
            weight = f"{weight}_transposed_{node.name}"
            model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), weight))
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else ""
        beta = float(attrs.get("beta", 1.0))
        if bias and beta != 1.0:
            if bias not in inits:
                nodes.append(node)  # a computed bias scaled by beta: leave this Gemm alone
                continue
            scaled = numpy_helper.to_array(inits[bias]) * np.float32(beta)
            bias = f"{bias}_beta_{node.name}"
            model.graph.initializer.append(numpy_helper.from_array(scaled.astype(np.float32), bias))
        product = f"{node.output[0]}_matmul" if bias else node.output[0]
        nodes.append(onnx.helper.make_node("MatMul", [node.input[0], weight], [product], name=node.name))
        if bias:
            nodes.append(onnx.helper.make_node("Add", [product, bias], [node.output[0]], name=f"{node.name}_bias"))
        count += 1
    model.graph.ClearField("node")
    model.graph.node.extend(nodes)
    return count


def quantized_nodes(model: onnx.ModelProto) -> list[str]:
    """The MatMulNBits (and 4-bit Gather) nodes of a quantized model."""
    return [n.name for n in model.graph.node if n.op_type in (NBITS_OP, GATHER_OP)]


def quantize_int4_weight(
    src: Path, dst: Path, *, exclude_nodes: Sequence[str] = (), options: Int4Options | None = None,
    external_above: int = EXTERNAL_DATA_ABOVE,
) -> Int8Result:
    """Quantize the constant MatMul weights of ``src`` to 4-bit blocks at ``dst``; ``exclude_nodes`` stay FP32.

    Node names are ``src``'s (there is no pre-processing: the quantizer needs only the initializers).
    Returns an :class:`~optpipe.precision.static_quantize.Int8Result` with ``method="weight-only-int4"``
    and no ranges; ``status="nothing_quantizable"`` (nothing written) when no constant-weight
    MatMul/Gemm is left. ``dst`` is written through :func:`optpipe.onnx.utils.save_onnx`, so a
    model whose weights stay over 1.8 GB gets its ``model.onnx.data`` beside it.
    """
    options = options or Int4Options()
    options.check()
    nbits = _quantizer_module()
    model = onnx_graph.load_model(Path(src))
    opset = _default_opset(model)  # before the quantizer, which may raise it in place
    quantizable = quantizable_nodes(model, options.embeddings)
    excluded = [n for n in dict.fromkeys(exclude_nodes) if n in set(quantizable)]
    warnings = [f"int4-weight: exclude node '{n}' is not a quantizable MatMul/Gemm; ignored"
                for n in dict.fromkeys(exclude_nodes) if n not in set(quantizable)]  # fmt: skip
    nothing = _nothing_left("cpu", METHOD, quantizable, excluded, warnings,
                            "the model has no MatMul/Gemm with a constant 2-D weight")  # fmt: skip
    if nothing is not None:
        return nothing
    gemms_to_matmuls(model, skip=excluded)
    # ORT's quantizer takes every MatMul/Gather of an initializer (shape lookups, N-D weights too): only the nodes
    # counted here (which the guard can keep) are let through.
    others = [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gather") and n.name not in set(quantizable)]
    config = _algo_config(nbits, options)
    quantizer = nbits.MatMulNBitsQuantizer(model, nodes_to_exclude=[*excluded, *others], algo_config=config)
    quantizer.process()
    out = quantizer.model.model
    done = [name.removesuffix("_Q4") for name in quantized_nodes(out)]
    if any(n.op_type == GATHER_OP for n in out.graph.node) and opset < _default_opset(out):
        warnings.append(f"int4-weight: embedding tables quantized; the model's opset raised from {opset} to "
                        f"{_default_opset(out)} (ONNX Runtime's 4-bit Gather needs 21)")
    if not done:
        warnings.append("the MatMulNBits quantizer quantized no node")
        return Int8Result("nothing_quantizable", None, "cpu", METHOD, [], quantizable, excluded, {}, warnings)
    save_replacing(out, Path(dst), external_above)
    return Int8Result("quantized", Path(dst), "cpu", METHOD, done, quantizable, excluded, {}, warnings)


def _algo_config(nbits: Any, options: Int4Options) -> Any:
    """ONNX Runtime's weight-only config for ``options`` (HQQ writes no accuracy_level: the kernel's default)."""
    if options.algorithm == "hqq":
        return nbits.HQQWeightOnlyQuantConfig(block_size=options.block_size, bits=4, op_types_to_quantize=("MatMul",))
    return nbits.DefaultWeightOnlyQuantConfig(
        block_size=options.block_size, is_symmetric=options.symmetric, accuracy_level=options.accuracy_level or None,
        op_types_to_quantize=("MatMul", "Gather") if options.embeddings else ("MatMul",),
        quant_axes=(("MatMul", 0), ("Gather", 1)))


def _quantizer_module() -> Any:
    """ONNX Runtime's ``matmul_nbits_quantizer``, imported without its side effect on the process's logging.

    Why: the module calls ``logging.basicConfig(level=INFO)`` when imported, which would print every
    library's INFO records (and its own line per node) for the rest of the build; the root logger's
    handlers and level are put back, and its own logger is kept to warnings.
    """
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        from onnxruntime.quantization import matmul_nbits_quantizer
    finally:
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
        root.setLevel(level)
    # ERROR: its one warning (the opset raised to 21 for a 4-bit Gather) is recorded as a build warning instead.
    logging.getLogger(matmul_nbits_quantizer.__name__).setLevel(logging.ERROR)
    return matmul_nbits_quantizer


def _default_opset(model: onnx.ModelProto) -> int:
    """The model's ai.onnx opset version."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def save_replacing(model: onnx.ModelProto, dst: Path, external_above: int = EXTERNAL_DATA_ABOVE) -> None:
    """Write ``model`` at ``dst`` with :func:`~optpipe.onnx.utils.save_onnx` in a scratch folder beside it, then rename.

    Why not a temporary file name: an external data file is named after its model (``model.onnx.data``)
    and the model records that name, so both are written under their final names in the scratch folder
    and moved in; a data file left by an earlier, larger model at ``dst`` is removed.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}."))
    try:
        written = save_onnx(model, scratch / dst.name, external_above=external_above)
        stale = dst.parent / f"{dst.name}.data"
        if stale.exists() and all(f.name != stale.name for f in written):
            stale.unlink()
        for file in reversed(written):  # the data file first: the model is never there without it
            os.replace(file, dst.parent / file.name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
