"""Output sensitivity for dynamic INT8: the output error each quantized node is responsible for.

Why: the guard's per-layer table ranks nodes by the error they add to their own output tensor, and its
output-sensitivity pass (:mod:`optpipe.precision.guard.sensitivity`) emulates "this node in FP32" by
bypassing a Q/DQ pair. A dynamically quantized graph has none (``DynamicQuantizeLinear -> MatMulInteger``),
so on all-MiniLM-L6-v2 the guard ranked by local error alone: asked for ``min_row_cosine=0.99`` it kept 12
MatMuls and reached 0.9845.

Here the FP32 graph is rebuilt with every quantized node *emulated*: its activation goes through
``DynamicQuantizeLinear -> DequantizeLinear`` (the very ops the integer kernel applies) and its weight is
the dequantized weight the quantizer wrote into the low-precision model (``<W>_quantized``, ``<W>_scale``,
``<W>_zero_point``). Each emulated node reads a switch (a bool of one graph input vector), so one session
answers "the output error with only node *n* back in FP32" for every candidate: one run per candidate per
row, one model copy alive. The error is the mean over rows of the squared relative error of the float
outputs, the rows' ``1 - cosine`` (times 2) for unit embeddings, plus the worst row's: the ranking follows
per-row cosine and its minimum.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from optpipe.precision import onnx_graph

SWITCHES = "__optpipe_quantized"


def _dequantized_weights(lowp: onnx.ModelProto) -> dict[str, np.ndarray]:
    """FP32 weight name -> its dequantized value, for every weight the dynamic quantizer wrote."""
    inits = {i.name: i for i in lowp.graph.initializer}
    out: dict[str, np.ndarray] = {}
    for name in inits:
        if not name.endswith("_quantized"):
            continue
        base = name[: -len("_quantized")]
        scale, zero = inits.get(f"{base}_scale"), inits.get(f"{base}_zero_point")
        if scale is None or zero is None:
            continue
        q = numpy_helper.to_array(inits[name]).astype(np.float32)
        s, z = numpy_helper.to_array(scale).astype(np.float32), numpy_helper.to_array(zero).astype(np.float32)
        if s.size > 1 and q.ndim == 2 and s.size == q.shape[1]:  # per-channel MatMul weight: one scale per column
            out[base] = (q - z.reshape(1, -1)) * s.reshape(1, -1)
        elif s.size == 1:
            out[base] = (q - z.reshape(())) * s.reshape(())
    return out


def _switch(model: onnx.ModelProto, index: int, tag: str, added: list[onnx.NodeProto]) -> str:
    """A bool scalar: element ``index`` of the switches input (its Gather appended to ``added``)."""
    at, out = f"{tag}/switch_at", f"{tag}/switch"
    model.graph.initializer.append(numpy_helper.from_array(np.array(index, np.int64), at))
    added.append(helper.make_node("Gather", [SWITCHES, at], [out], name=out))
    return out


def emulated(
    fp32: onnx.ModelProto, lowp: onnx.ModelProto, candidates: Sequence[str]
) -> tuple[onnx.ModelProto, list[str]]:
    """``fp32`` with ``candidates`` (MatMuls, embedding Gathers) switchable to their dynamic INT8 emulation.

    Returns the model (a bool input ``SWITCHES`` of one entry per emulated node: True = quantized) and the
    emulated node names, in switch order. A candidate whose weight the quantizer did not write is left out.
    """
    model = onnx.ModelProto()
    model.CopyFrom(fp32)
    weights = _dequantized_weights(lowp)
    by_name = {n.name: n for n in model.graph.node}
    done: list[str] = []
    added: list[onnx.NodeProto] = []
    for name in candidates:
        node = by_name.get(name)
        slot = 0 if node is not None and node.op_type == "Gather" else 1
        if node is None or node.op_type not in ("MatMul", "Gather") or node.input[slot] not in weights:
            continue
        tag = f"__optpipe_emulate/{len(done)}"
        switch = _switch(model, len(done), tag, added)
        deq = f"{tag}/weight"
        model.graph.initializer.append(numpy_helper.from_array(weights[node.input[slot]], deq))
        added.extend(_emulate_gather(node, deq, switch, tag) if slot == 0 else _emulate_matmul(node, deq, switch, tag))
        done.append(name)
    _insert_before_users(model, added)
    model.graph.input.append(helper.make_tensor_value_info(SWITCHES, onnx.TensorProto.BOOL, [len(done)]))
    return model, done


def _emulate_gather(node: onnx.NodeProto, deq: str, switch: str, tag: str) -> list[onnx.NodeProto]:
    """The gathered rows of the dequantized table or of the FP32 one (selecting rows, not a 47 MB table)."""
    rows, fp32_rows = f"{tag}/rows", f"{tag}/fp32_rows"
    new = [helper.make_node("Gather", [deq, node.input[1]], [rows], name=rows, axis=_axis(node)),
           helper.make_node("Where", [switch, rows, fp32_rows], [node.output[0]], name=f"{tag}/select")]  # fmt: skip
    node.output[0] = fp32_rows
    return new


def _emulate_matmul(node: onnx.NodeProto, deq: str, switch: str, tag: str) -> list[onnx.NodeProto]:
    """The activation as the integer kernel sees it (DynamicQuantizeLinear), the weight as the quantizer wrote it."""
    x = node.input[0]
    q, s, z, x_deq, x_used, weight = (f"{tag}/{k}" for k in ("xq", "xs", "xz", "xdq", "x_used", "weight_used"))
    new = [
        helper.make_node("Where", [switch, deq, node.input[1]], [weight], name=weight),
        helper.make_node("DynamicQuantizeLinear", [x], [q, s, z], name=q),
        helper.make_node("DequantizeLinear", [q, s, z], [x_deq], name=x_deq),
        helper.make_node("Where", [switch, x_deq, x], [x_used], name=x_used),
    ]
    node.input[0], node.input[1] = x_used, weight
    return new


def _axis(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 0)


def _insert_before_users(model: onnx.ModelProto, new_nodes: list[onnx.NodeProto]) -> None:
    """Put each new node right before the first node reading its output (the graph stays topologically sorted)."""
    produced = {o: node for node in new_nodes for o in node.output}
    ordered: list[onnx.NodeProto] = []
    placed: set[int] = set()

    def place(node: onnx.NodeProto) -> None:
        if id(node) in placed:
            return
        placed.add(id(node))
        for name in node.input:
            if name in produced:
                place(produced[name])
        ordered.append(node)

    for node in list(model.graph.node):
        for name in node.input:
            if name in produced:
                place(produced[name])
        ordered.append(node)
    for node in new_nodes:
        place(node)
    del model.graph.node[:]
    model.graph.node.extend(ordered)


def _outputs(values: Sequence[np.ndarray]) -> np.ndarray:
    floats = [np.asarray(v, np.float64).ravel() for v in values if np.issubdtype(np.asarray(v).dtype, np.floating)]
    return np.concatenate(floats) if floats else np.zeros(0)


def _error(ref: Sequence[np.ndarray], low: Sequence[np.ndarray]) -> float:
    """The rows' mean squared relative error plus the worst row's (inf when a row is not finite).

    Why the worst row: a ``min_row_cosine`` bar is decided by one row, and a node whose error is spread thin
    over many rows can rank above the one that sinks the worst sentence (issue 19: ranked by the mean, the
    guard kept 12 MatMuls and the worst held-out row stayed at 0.9858). The mean keeps the ranking stable
    when the worst row changes from one round to the next.
    """
    errors = []
    for a, b in zip(ref, low, strict=True):
        if not np.isfinite(b).all():
            return float("inf")
        errors.append(float(np.dot(a - b, a - b)) / max(float(np.dot(a, a)), 1e-24))
    return float(np.mean(errors)) + max(errors) if errors else 0.0


def dynamic_output_gains(
    fp32: onnx.ModelProto,
    lowp_path: Path,
    samples: Sequence[Mapping[str, np.ndarray]],
    candidates: Sequence[str],
) -> dict[str, float]:
    """For each candidate (quantized in ``lowp_path``), the output error removed by running it alone in FP32.

    Positive: keeping it helps. All candidates are emulated together (the model as built, less the nodes
    already kept); each is then switched back to FP32 on its own. Candidates not emulated are absent.
    """
    lowp = onnx_graph.load_model(Path(lowp_path))
    model, names = emulated(fp32, lowp, candidates)
    if not names or not samples:
        return {}
    session = onnx_graph.session(model)
    feed_names = {i.name for i in session.get_inputs()} - {SWITCHES}
    feeds = [{k: v for k, v in row.items() if k in feed_names} for row in samples]

    def run(switches: np.ndarray) -> list[np.ndarray]:
        return [_outputs(session.run(None, {**feed, SWITCHES: switches})) for feed in feeds]

    ref = run(np.zeros(len(names), bool))
    base = _error(ref, run(np.ones(len(names), bool)))
    gains: dict[str, float] = {}
    for k, name in enumerate(names):
        switches = np.ones(len(names), bool)
        switches[k] = False
        gains[name] = base - _error(ref, run(switches))
    return gains
