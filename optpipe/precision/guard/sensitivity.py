"""Output sensitivity: how much the model's *output* improves when one node runs in FP32.

Why: the per-layer table of :mod:`optpipe.precision.guard.localize` ranks nodes by
the relative error they add to their own output tensor. Errors grow as they
travel through a network, so that ranking favours late layers and misses
the early ones whose small local error is amplified downstream. Measured on
EfficientNet-Lite0 (static INT8, CPU style): the table ranked the stem
convolution 20th, while restoring just its inputs to FP32 removed a fifth of
the output error, more than any other node; the guard kept ten late nodes and
the gate still failed.

This module measures the quantity the gate judges: for each candidate node,
the drop in the model outputs' relative error (against FP32, on a few
calibration samples) when that node's inputs bypass their Q/DQ pair and its
quantized weights are replaced by the FP32 weights - an emulation of keeping
that node in FP32 without re-running the quantizer. One in-memory model edit
and one session per candidate, run one after another (one model copy alive).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from optpipe.precision import onnx_graph


def _float_outputs(model: onnx.ModelProto, samples: Sequence[Mapping[str, np.ndarray]]) -> list[np.ndarray]:
    """Every sample's float outputs, flattened into one vector per sample."""
    sess = onnx_graph.session(model)
    feed = {i.name for i in sess.get_inputs()}
    out: list[np.ndarray] = []
    for sample in samples:
        values = sess.run(None, {k: v for k, v in sample.items() if k in feed})
        floats = [np.asarray(v, np.float64).ravel() for v in values if np.issubdtype(np.asarray(v).dtype, np.floating)]
        out.append(np.concatenate(floats) if floats else np.zeros(0))
    return out


def _rel_error(ref: Sequence[np.ndarray], low: Sequence[np.ndarray]) -> float:
    diff = sum(float(np.dot(a - b, a - b)) for a, b in zip(ref, low, strict=True))
    norm = sum(float(np.dot(a, a)) for a in ref)
    if not np.isfinite(diff):
        return float("inf")
    return float(np.sqrt(diff) / max(np.sqrt(norm), 1e-12))


def _in_fp32(lowp: onnx.ModelProto, fp32: onnx.ModelProto, names: set[str]) -> onnx.ModelProto | None:
    """A copy of ``lowp`` where the nodes ``names`` read FP32 inputs: Q/DQ bypassed, FP32 weights restored.

    None when no input of those nodes was quantized (nothing to emulate).
    """
    model = onnx.ModelProto()
    model.CopyFrom(lowp)
    producer = {out: node for node in model.graph.node for out in node.output}
    inits = {i.name for i in model.graph.initializer}
    fp_nodes = {node.name: node for node in fp32.graph.node}
    fp_inits = {i.name: i for i in fp32.graph.initializer}
    changed = False
    for node in model.graph.node:
        if node.name not in names:
            continue
        for k, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producer.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":  # an activation: read the float tensor
                node.input[k], changed = q.input[0], True
            elif dq.input[0] in inits and node.name in fp_nodes and k < len(fp_nodes[node.name].input):
                weight = fp_nodes[node.name].input[k]  # a quantized weight: read the FP32 initializer
                if weight in fp_inits:
                    fp_name = f"{weight}__optpipe_fp32"  # the quantizer may reuse the FP32 name for a DQ output
                    if fp_name not in inits:
                        copy = onnx.TensorProto()
                        copy.CopyFrom(fp_inits[weight])
                        copy.name = fp_name
                        model.graph.initializer.append(copy)
                        inits.add(fp_name)
                    node.input[k], changed = fp_name, True
    return model if changed else None


def output_sensitivity(
    fp32: onnx.ModelProto,
    lowp: onnx.ModelProto,
    samples: Sequence[Mapping[str, np.ndarray]],
    candidates: Sequence[Sequence[str]],
) -> list[float | None]:
    """For each candidate group of node names, the output relative error removed by keeping it in FP32.

    Positive: keeping the group helps the output; None for a group with no
    quantized input (nothing to emulate: e.g. already kept, its error arrives
    from a producer). Both models run unoptimised (Q/DQ emulated in float).
    """
    ref = _float_outputs(fp32, samples)
    base = _rel_error(ref, _float_outputs(lowp, samples))
    gains: list[float | None] = []
    for group in candidates:
        edited = _in_fp32(lowp, fp32, set(group))
        gains.append(None if edited is None else base - _rel_error(ref, _float_outputs(edited, samples)))
    return gains
