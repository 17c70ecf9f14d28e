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
#: Block size of the 8-bit blocks a node the guard keeps gets (``kept_as="int8"``): 8 bits round to 1 part in
#: 255 of a block's range, so a block of 128 still errs far less than 4 bits at 16, at 1.04 bytes per weight
#: (scale and zero point included) where block 32 costs 1.16: the guard may keep most MatMuls in a small model.
KEPT_BLOCK_SIZE = 128
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

    With ``embeddings`` (4-bit or 8-bit tables), also each Gather of an embedding table (a constant 2-D float matrix).
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
    external_above: int = EXTERNAL_DATA_ABOVE, eight_bit_nodes: Sequence[str] = (),
) -> Int8Result:
    """Quantize the constant MatMul weights of ``src`` to 4-bit blocks at ``dst``; ``exclude_nodes`` stay FP32.

    ``eight_bit_nodes`` (MatMuls, not in ``exclude_nodes``) get 8-bit blocks instead (the guard's ``kept_as="int8"``).
    With ``options.embeddings_int8`` the embedding tables not excluded become uint8 (:func:`int8_tables`).

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
    quantizable = quantizable_nodes(model, options.embeddings or options.embeddings_int8)
    # A table the guard keeps has no 8-bit MatMul form: it stays FP32.
    gathers = {n.name for n in model.graph.node if n.op_type == "Gather"}
    exclude_nodes = [*exclude_nodes, *(n for n in eight_bit_nodes if n in gathers)]
    excluded = [n for n in dict.fromkeys(exclude_nodes) if n in set(quantizable)]
    warnings = [f"int4-weight: exclude node '{n}' is not a quantizable MatMul/Gemm; ignored"
                for n in dict.fromkeys(exclude_nodes) if n not in set(quantizable)]  # fmt: skip
    nothing = _nothing_left("cpu", METHOD, quantizable, excluded, warnings,
                            "the model has no MatMul/Gemm with a constant 2-D weight")  # fmt: skip
    if nothing is not None:
        return nothing
    gemms_to_matmuls(model, skip=excluded)
    tables = int8_tables(model, set(quantizable) - set(excluded)) if options.embeddings_int8 else []
    # ORT's quantizer takes every MatMul/Gather of an initializer (shape lookups, N-D weights too): only the nodes
    # counted here (which the guard can keep) are let through.
    others = [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gather") and n.name not in set(quantizable)]
    eight = [n for n in dict.fromkeys(eight_bit_nodes) if n in set(quantizable) and n not in set(excluded)]
    if eight:  # first the 8-bit nodes alone, then 4 bits for the rest (ORT's config has one bit width per run)
        rest = [n.name for n in model.graph.node if n.name not in set(eight)]
        eight_bit = Int4Options(KEPT_BLOCK_SIZE, accuracy_level=options.accuracy_level)
        model = _run_quantizer(nbits, model, rest, eight_bit, bits=8)
    out = _run_quantizer(nbits, model, [*excluded, *others], options)
    done = [*tables, *(name.removesuffix("_Q4").removesuffix("_Q8") for name in quantized_nodes(out))]
    if any(n.op_type == GATHER_OP for n in out.graph.node) and opset < _default_opset(out):
        warnings.append(f"int4-weight: embedding tables quantized; the model's opset raised from {opset} to "
                        f"{_default_opset(out)} (ONNX Runtime's 4-bit Gather needs 21)")
    if not done:
        warnings.append("the MatMulNBits quantizer quantized no node")
        return Int8Result("nothing_quantizable", None, "cpu", METHOD, [], quantizable, excluded, {}, warnings)
    save_replacing(out, Path(dst), external_above)
    return Int8Result("quantized", Path(dst), "cpu", METHOD, done, quantizable, excluded, {}, warnings)


def _run_quantizer(nbits: Any, model: onnx.ModelProto, exclude: Sequence[str], options: Int4Options,
                   bits: int = 4) -> onnx.ModelProto:
    """ONNX Runtime's MatMulNBits quantizer over ``model`` (changed in place) with ``exclude`` left alone."""
    quantizer = nbits.MatMulNBitsQuantizer(model, nodes_to_exclude=list(exclude),
                                           algo_config=_algo_config(nbits, options, bits))  # fmt: skip
    quantizer.process()
    return quantizer.model.model


def _algo_config(nbits: Any, options: Int4Options, bits: int = 4) -> Any:
    """ONNX Runtime's weight-only config for ``options`` (HQQ writes no accuracy_level: the kernel's default)."""
    if options.algorithm == "hqq":
        return nbits.HQQWeightOnlyQuantConfig(block_size=options.block_size, bits=bits,
                                              op_types_to_quantize=("MatMul",))  # fmt: skip
    return nbits.DefaultWeightOnlyQuantConfig(
        block_size=options.block_size, is_symmetric=options.symmetric, accuracy_level=options.accuracy_level or None,
        op_types_to_quantize=("MatMul", "Gather") if options.embeddings else ("MatMul",),
        quant_axes=(("MatMul", 0), ("Gather", 1)), bits=bits)


def int8_tables(model: onnx.ModelProto, gathers: set[str]) -> list[str]:
    """Rewrite each Gather in ``gathers`` of an embedding table to read a uint8 copy, then ``DequantizeLinear``.

    In place; returns the Gathers rewritten. One scale and zero point per table, from ONNX Runtime's
    ``quantize_data`` (the quantization ``int8-dynamic``'s ``quantize_dynamic`` gives a Gather): the opset
    stays as it is (unlike the 4-bit ``GatherBlockQuantized``), and a table 4 bytes a value becomes 1.
    The Gather keeps its name and the DequantizeLinear writes its output, so names still refer to ``src``.
    """
    from onnxruntime.quantization.quant_utils import quantize_data

    tables = embedding_tables(model)
    inits = {i.name: i for i in model.graph.initializer}
    made: dict[str, tuple[str, str, str]] = {}
    nodes: list[onnx.NodeProto] = []
    done: list[str] = []
    for node in model.graph.node:
        nodes.append(node)
        if node.name not in gathers or node.op_type != "Gather" or node.input[0] not in tables:
            continue
        table = node.input[0]
        if table not in made:
            zero, scale, q = quantize_data(numpy_helper.to_array(inits[table]).ravel(), onnx.TensorProto.UINT8,
                                                 symmetric=False)  # fmt: skip
            names = (f"{table}_uint8", f"{table}_scale", f"{table}_zero_point")
            model.graph.initializer.extend([
                numpy_helper.from_array(np.asarray(q, np.uint8).reshape(tuple(inits[table].dims)), names[0]),
                numpy_helper.from_array(np.asarray(scale, np.float32).reshape(()), names[1]),
                numpy_helper.from_array(np.asarray(zero, np.uint8).reshape(()), names[2])])  # fmt: skip
            made[table] = names
        out = node.output[0]
        node.input[0], node.output[0] = made[table][0], f"{out}_uint8"
        nodes.append(onnx.helper.make_node("DequantizeLinear", [node.output[0], *made[table][1:]], [out],
                                           name=f"{node.name}_dequantize"))  # fmt: skip
        done.append(node.name)
    used = {i for n in nodes for i in n.input} | {o.name for o in model.graph.output}
    for table in [t for t in made if t not in used]:  # an FP32 table nothing reads any more goes
        model.graph.initializer.remove(inits[table])
    model.graph.ClearField("node")
    model.graph.node.extend(nodes)
    return done


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
